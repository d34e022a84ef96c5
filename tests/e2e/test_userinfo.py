"""The `userinfo` auth method through real Envoy and the mock Okta (oidc-provider): an opaque user access token
is accepted while the provider's userinfo endpoint answers it; the answer's claims feed the group rule and the
claim header, and the whole answer reaches the upstream base64url-encoded in `upstream_user_info_header`."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from urllib.parse import urlencode

import requests
from requests.structures import CaseInsensitiveDict

from browserflow import Browser, LoginFailed, idp_login, qs1
from conftest import World
from world import HTTP_TIMEOUT

RESOURCE = "api://opaque"


def opaque_user_token(world: World, user: str = "alice") -> str:
    """An authorization-code login at the IdP as oidc-authz's own client for the opaque API (a resource indicator
    at both steps): an opaque access token with the OpenID scopes, which the userinfo endpoint answers."""
    disc = world.discovery()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect_uri = world.url("/oauth2/callback")
    authorize_url = disc["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": "oidc-authz", "redirect_uri": redirect_uri,
        "scope": "openid email profile groups api:read", "resource": RESOURCE,
        "state": secrets.token_urlsafe(16), "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    b = Browser()
    code = qs1(idp_login(world, b, authorize_url, user))["code"]
    r = requests.post(disc["token_endpoint"], auth=("oidc-authz", "oidc-authz-secret"), timeout=HTTP_TIMEOUT, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier,
        "resource": RESOURCE,
    })
    if r.status_code != 200:
        raise LoginFailed(b, f"code exchange at the IdP failed: {r.status_code} {r.text[:300]}", r)
    t = r.json()["access_token"]
    assert t.count(".") != 2, f"expected an opaque token for {RESOURCE}, got a JWT: {t[:40]}..."
    return t


def echoed(resp) -> CaseInsensitiveDict:
    assert resp.status_code == 200, f"expected httpbin's 200, got {resp.status_code}: {resp.text[:500]}"
    return CaseInsensitiveDict(resp.json()["headers"])


def test_userinfo_answer_feeds_rules_and_headers(authz: World):
    t = opaque_user_token(authz)
    h = echoed(authz.get("/anything/userinfo/a", token=t, headers={"X-Userinfo": "forged", "X-Email": "forged"}))
    assert h.get("X-Email") == "alice@example.com", dict(h)
    encoded = h.get("X-Userinfo", "")
    assert "=" not in encoded, encoded
    answer = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert answer["sub"] == "alice" and "admins" in answer["groups"], answer
    # the same answer as the provider's own userinfo endpoint gives the token
    direct = requests.get(authz.discovery()["userinfo_endpoint"], headers={"Authorization": f"Bearer {t}"},
                          timeout=HTTP_TIMEOUT)
    assert direct.status_code == 200 and direct.json() == answer, direct.text


def test_userinfo_claims_decide_access(authz: World):
    r = authz.get("/anything/userinfo/b", token=opaque_user_token(authz, "bob"))
    assert r.status_code == 403, r.text
    assert json.loads(r.text)["error"] == "insufficient_scope"


def test_tokens_the_userinfo_endpoint_refuses_are_401(authz: World):
    # a client-credentials token (no user) and a token the IdP never issued
    cc = authz.idp_token("cc-app", "cc-app-secret", scope="api:read", resource=RESOURCE)
    for t in (cc, "not-a-token-the-idp-issued"):
        r = authz.get("/anything/userinfo/c", token=t)
        assert r.status_code == 401, r.text
        assert json.loads(r.text)["error"] == "invalid_token"
        assert 'error="invalid_token"' in r.headers.get("www-authenticate", "")
        assert "no-store" in r.headers.get("cache-control", "")
        assert t not in r.text
