"""`client_auth = "private_key_jwt"` through real Envoy and the real provider (npm oidc-provider as the mock Okta):
oidc-authz's client `oidc-authz-service` is registered with a public JWK only (examples/okta-mock-idp/server.mjs,
as Okta recommends for service apps) and authenticates every introspection with an RFC 7523 assertion signed with
the private JWK of providers.okta_jwt (tests/e2e/oidc-authz.template.toml). oidc-provider checks the signature,
iss = sub = the client, aud, exp and that the jti was never used before, so the second request proves a fresh jti.
The same client signing with a key the provider does not know is refused (invalid_client): 503, never an allow."""

from __future__ import annotations

import re

import requests
from requests.structures import CaseInsensitiveDict

from conftest import World

CC_APP = ("cc-app", "cc-app-secret")


def idp_calls(world: World, provider: str, endpoint: str, outcome: str) -> float:
    text = requests.get(f"http://127.0.0.1:{world.authz_admin_port}/metrics", timeout=5).text
    m = re.search(rf'^oidc_authz_idp_requests_total\{{provider="{provider}",endpoint="{endpoint}",outcome="{outcome}"\}} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def opaque_token(world: World) -> str:
    t = world.idp_token(*CC_APP, scope="api:read", resource="api://opaque")
    assert t.count(".") != 2, f"expected an opaque token for api://opaque, got a JWT: {t[:40]}..."
    return t


def test_introspection_by_a_private_key_jwt_client(authz: World):
    t = opaque_token(authz)
    before = idp_calls(authz, "okta_jwt", "introspection", "ok")
    for _ in range(2):  # cache off: two calls, two assertions (a reused jti would be refused)
        r = authz.get("/anything/pkjwt-introspect", token=t, headers={"X-User": "attacker"})
        assert r.status_code == 200, r.text
        h = CaseInsensitiveDict(r.json()["headers"])
        assert h.get("X-User") == "cc-app" and h.get("X-Client-Id") == "cc-app", dict(h)
    assert idp_calls(authz, "okta_jwt", "introspection", "ok") - before == 2
    # an unknown token is still the caller's problem: 401
    r = authz.get("/anything/pkjwt-introspect", token="not-a-token-the-idp-issued")
    assert r.status_code == 401, r.text


def test_a_wrong_key_is_refused_and_fails_closed(authz: World):
    t = opaque_token(authz)
    r = authz.get("/anything/pkjwt-wrong", token=t)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "temporarily_unavailable", r.text
    # the IdP answered, refusing this service's client (a configuration problem, logged as such, with no key in it)
    log = authz.logs["authz"].read_text()
    refused = [line for line in log.splitlines()
               if "okta_jwt_wrong" in line and "refused this service's client credentials" in line]
    assert refused, "no log line for the refused client assertion"
    assert '"d"' not in log and "client_assertion" not in log


def test_client_credentials_callers_keep_their_secret(authz: World):
    r = requests.get(authz.url("/anything/pkjwt-cc/get"), auth=CC_APP, timeout=10)
    assert r.status_code == 200, r.text
    h = CaseInsensitiveDict(r.json()["headers"])
    assert h.get("X-Client-Id") == "cc-app", dict(h)
    assert h.get("Authorization", "").startswith("Bearer "), dict(h)
