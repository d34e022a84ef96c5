"""Client credentials at the gateway (Kong + Okta seed tutorial, part 1), through real Envoy and the mock Okta:
the application sends its client id and secret (Basic); oidc-authz runs the client-credentials grant at the IdP,
forwards `Authorization: Bearer <token>` upstream and injects the token's issuer as `Issuer_Header`."""

from __future__ import annotations

import json
import re

import requests
from requests.structures import CaseInsensitiveDict

from conftest import World, jwt_claims

CC_APP = ("cc-app", "cc-app-secret")
CC_READONLY = ("cc-readonly", "cc-readonly-secret")


def echoed(resp) -> CaseInsensitiveDict:
    assert resp.status_code == 200, f"expected httpbin's 200, got {resp.status_code}: {resp.text[:500]}"
    return CaseInsensitiveDict(resp.json()["headers"])


def token_requests(world: World) -> float:
    """oidc-authz's own count of successful token-endpoint calls (Prometheus text on its admin port)."""
    text = requests.get(f"http://127.0.0.1:{world.authz_admin_port}/metrics", timeout=5).text
    m = re.search(r'^oidc_authz_idp_requests_total\{provider="okta",endpoint="token",outcome="ok"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_seed_scenario_issuer_header_and_bearer_upstream(authz: World):
    r = requests.get(authz.url("/oidcroute/get"), auth=CC_APP, timeout=10)
    h = echoed(r)
    # gunicorn runs with --header-map dangerous so httpbin shows Issuer_Header (as Issuer-Header)
    assert h.get("Issuer-Header") == authz.issuer, dict(h)
    upstream_auth = h.get("Authorization", "")
    assert upstream_auth.startswith("Bearer "), f"the upstream must get the token, not the Basic credentials: {upstream_auth!r}"
    claims = jwt_claims(upstream_auth.split(" ", 1)[1])
    assert claims["iss"] == authz.issuer and claims["cid"] == "cc-app" and "api:read" in claims["scp"], claims
    assert "cc-app-secret" not in r.text


def test_without_credentials_the_route_is_refused(authz: World):
    r = authz.get("/oidcroute/get")
    assert r.status_code == 401, r.text
    www = r.headers.get("www-authenticate", "")
    assert www.startswith('Basic realm="cc"') and 'Bearer realm="cc"' in www, www
    assert "no-store" in r.headers.get("cache-control", "")
    assert json.loads(r.text)["error"] == "invalid_token"


def test_wrong_secret_is_401_invalid_client(authz: World):
    r = requests.get(authz.url("/oidcroute/get"), auth=("cc-app", "not-the-secret"), timeout=10)
    assert r.status_code == 401, r.text
    assert json.loads(r.text)["error"] == "invalid_client"
    assert "not-the-secret" not in r.text and all("not-the-secret" not in v for v in r.headers.values())


def test_client_without_the_required_scope_is_403(authz: World):
    # the mock Okta silently drops scopes a client may not have (cc-readonly lacks api:read)
    r = requests.get(authz.url("/oidcroute/get"), auth=CC_READONLY, timeout=10)
    assert r.status_code == 403, r.text
    assert 'error="insufficient_scope"' in r.headers.get("www-authenticate", "")


def test_a_bearer_token_also_works_on_the_route(authz: World):
    token = authz.idp_token(*CC_APP)
    h = echoed(authz.get("/oidcroute/get", token=token))
    assert h.get("Issuer-Header") == authz.issuer
    assert h.get("Authorization") == f"Bearer {token}"


def test_one_token_request_per_credential_while_the_token_lives(authz: World):
    requests.get(authz.url("/oidcroute/get"), auth=CC_APP, timeout=10)  # make sure one is cached
    before = token_requests(authz)
    tokens = set()
    for _ in range(10):
        h = echoed(requests.get(authz.url("/oidcroute/headers"), auth=CC_APP, timeout=10))
        tokens.add(h["Authorization"])
    assert len(tokens) == 1, "the cached token is reused"
    assert token_requests(authz) == before, "no new token requests while the cached token lives"
