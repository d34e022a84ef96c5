"""Token introspection (Kong + Okta seed tutorial, part 3) through real Envoy and the mock Okta (oidc-provider):
opaque access tokens are accepted while the IdP says they are active, and refused once revoked (RFC 7009) — at
once with caching off, after the cache TTL with caching on."""

from __future__ import annotations

import json
import re
import time

import requests
from requests.structures import CaseInsensitiveDict

from browserflow import idp_user_tokens
from conftest import World

CC_APP = ("cc-app", "cc-app-secret")


def echoed(resp) -> CaseInsensitiveDict:
    assert resp.status_code == 200, f"expected httpbin's 200, got {resp.status_code}: {resp.text[:500]}"
    return CaseInsensitiveDict(resp.json()["headers"])


def opaque_token(world: World) -> str:
    t = world.idp_token(*CC_APP, scope="api:read", resource="api://opaque")
    assert t.count(".") != 2, f"expected an opaque token for api://opaque, got a JWT: {t[:40]}..."
    return t


def revoke(world: World, token: str) -> None:
    """RFC 7009 at the IdP, as the token's own client."""
    r = requests.post(world.discovery()["revocation_endpoint"], data={"token": token, "token_type_hint": "access_token"},
                      auth=CC_APP, timeout=10)
    assert r.status_code == 200, r.text


def introspections(world: World) -> float:
    text = requests.get(f"http://127.0.0.1:{world.authz_admin_port}/metrics", timeout=5).text
    m = re.search(r'^oidc_authz_idp_requests_total\{provider="okta",endpoint="introspection",outcome="ok"\} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def test_active_opaque_token_passes_with_claims_upstream(authz: World):
    t = opaque_token(authz)
    h = echoed(authz.get("/introspect/headers", token=t, headers={"X-User": "attacker"}))
    assert h.get("X-User") == "cc-app" and h.get("X-Client-Id") == "cc-app", dict(h)


def test_caching_off_asks_every_time_and_revocation_is_immediate(authz: World):
    t = opaque_token(authz)
    before = introspections(authz)
    for _ in range(3):
        assert authz.get("/introspect/get", token=t).status_code == 200
    assert introspections(authz) - before == 3, "cache_introspection_secs = 0: each request reaches the IdP"
    revoke(authz, t)
    r = authz.get("/introspect/get", token=t)
    assert r.status_code == 401, r.text
    assert json.loads(r.text)["error"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers.get("www-authenticate", "")
    assert t not in r.text


def test_with_a_cache_revocation_shows_once_the_ttl_passes(authz: World):
    t = opaque_token(authz)
    assert authz.get("/anything/introspect-cached/a", token=t).status_code == 200
    before = introspections(authz)
    revoke(authz, t)
    assert authz.get("/anything/introspect-cached/b", token=t).status_code == 200, "cached answer within the TTL"
    assert introspections(authz) == before, "served from the cache"
    time.sleep(2.3)
    r = authz.get("/anything/introspect-cached/c", token=t)
    assert r.status_code == 401, r.text


def test_unknown_opaque_token_is_401(authz: World):
    r = authz.get("/introspect/get", token="not-a-token-the-idp-issued")
    assert r.status_code == 401, r.text
    assert "no-store" in r.headers.get("cache-control", "")


def idp_introspect(world: World, token: str) -> dict:
    """What the IdP itself answers oidc-authz's client for a token."""
    r = requests.post(world.discovery()["introspection_endpoint"], data={"token": token},
                      auth=("oidc-authz", "oidc-authz-secret"), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def assert_refused(resp, token: str):
    assert resp.status_code == 401, f"expected 401, got {resp.status_code}: {resp.text[:300]}"
    assert json.loads(resp.text)["error"] == "invalid_token"
    assert token not in resp.text and token not in resp.headers.get("www-authenticate", "")


def test_a_refresh_token_is_not_an_access_token(authz: World):
    """issue 10 item 2: the IdP calls a refresh token active (no aud, no token_type, a scope); it used to pass."""
    rt = idp_user_tokens(authz, "alice")["refresh_token"]
    answer = idp_introspect(authz, rt)
    assert answer.get("active") is True and "aud" not in answer and "token_type" not in answer, answer
    # audiences configured (no aud in the answer) and allow_any_audience (neither aud nor token_type)
    for path in ("/introspect/get", "/anything/any-audience/get"):
        assert_refused(authz.get(path, token=rt), rt)


def test_an_id_token_is_refused_on_introspection_routes(authz: World):
    tokens = idp_user_tokens(authz, "alice")
    it = tokens["id_token"]
    for path in ("/introspect/get", "/anything/introspect-cached/x", "/anything/any-audience/get"):
        assert_refused(authz.get(path, token=it), it)


def test_allow_any_audience_takes_access_tokens_of_any_api(authz: World):
    """The control for the refusals above: access tokens of other APIs pass where the policy allows any audience."""
    opaque = opaque_token(authz)
    other_jwt = authz.idp_token(*CC_APP, scope="api:read", resource="api://other")
    for t in (opaque, other_jwt):
        h = echoed(authz.get("/anything/any-audience/headers", token=t))
        assert h.get("X-User") == "cc-app", dict(h)
    assert authz.get("/introspect/get", token=other_jwt).status_code != 200, "api://other is not an audience there"
