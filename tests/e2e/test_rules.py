"""Issue 15 items 3, 5 and 7 through real Envoy and the mock Okta (oidc-provider): `claims_forbidden`,
`consumer_claim` (+ `consumer_optional`, `upstream_consumer_header`), `upstream_access_token_header`,
`upstream_introspection_header`, and the error answers (`display_errors` false by default, the two messages).

Policies rules_* in tests/e2e/oidc-authz.template.toml, reached through Envoy's catch-all route (/anything/...) and
the [[routes]] table. httpbin's /anything echoes the headers it received.
"""

from __future__ import annotations

import base64
import json

import requests
from requests.structures import CaseInsensitiveDict

from browserflow import idp_user_tokens
from conftest import HTTP_TIMEOUT, World, jwt_claims

CC_APP = ("cc-app", "cc-app-secret")


def echoed(resp) -> CaseInsensitiveDict:
    assert resp.status_code == 200, f"expected httpbin's 200, got {resp.status_code}: {resp.text[:500]}"
    return CaseInsensitiveDict(resp.json()["headers"])


def assert_generic_deny(resp, status: int, error: str, message: str) -> None:
    """A deny that says only `message`: the status, the error code and no-store stay; no check is named."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert "no-store" in resp.headers.get("cache-control", "").lower(), dict(resp.headers)
    body = json.loads(resp.text)
    assert body == {"error": error, "error_description": message, "status": status}, body
    www = resp.headers.get("www-authenticate", "")
    assert f'error="{error}"' in www and f'error_description="{message}"' in www, www


def authz_log_has(world: World, text: str) -> bool:
    """Whether oidc-authz's log (this start's output) contains `text`. The decision's log line is written (to
    unbuffered stderr) before the answer leaves oidc-authz, so it is there by the time the client has the answer."""
    return text in world.components["authz"].new_output()


# Odd spellings a client may try; Envoy (headers_with_underscores_action: REJECT_REQUEST) refuses `_` outright, so
# only case variants reach the Check through it.
def spoofed(*names: str) -> dict:
    return {n.upper(): "mallory" for n in names}


def test_a_forbidden_claim_is_refused_whatever_its_value(authz: World):
    cc = authz.idp_token(*CC_APP)
    h = echoed(authz.get("/anything/rules-forbidden", token=cc))
    assert h.get("X-User") == "cc-app", dict(h)
    # bob's access token carries kong_claim = [] (empty, but present): forbidden
    bob = idp_user_tokens(authz, "bob")["access_token"]
    assert jwt_claims(bob).get("kong_claim") == [], jwt_claims(bob)
    r = authz.get("/anything/rules-forbidden", token=bob)
    assert_generic_deny(r, 403, "insufficient_scope", "Forbidden")
    assert bob not in r.text
    # the reason is in the decision log, not in the answer
    assert "kong_claim" not in r.text and "kong_claim" not in r.headers.get("www-authenticate", "")
    assert authz_log_has(authz, "the token carries the forbidden claim kong_claim"), \
        "the decision log line must keep the reason"


def test_the_consumer_reaches_the_upstream_and_is_required(authz: World):
    bob = idp_user_tokens(authz, "bob")["access_token"]
    h = echoed(authz.get("/anything/rules-consumer", token=bob, headers=spoofed("x-consumer")))
    assert h.get("X-Consumer") == "bob", dict(h)
    # a client-credentials token has no `uid`: no consumer, 403
    cc = authz.idp_token(*CC_APP)
    r = authz.get("/anything/rules-consumer", token=cc, headers=spoofed("x-consumer"))
    assert_generic_deny(r, 403, "insufficient_scope", "Forbidden")
    # consumer_optional: it passes, and the client's copy never reaches httpbin
    h = echoed(authz.get("/anything/rules-optional", token=cc, headers=spoofed("x-consumer")))
    assert "X-Consumer" not in h, dict(h)


def test_the_access_token_goes_in_the_configured_header(authz: World):
    names = ("x-access-token", "x-introspection")
    # client credentials: the grant's token in X-Access-Token; the client's Basic secret never reaches httpbin
    r = requests.get(authz.url("/anything/rules-token"), auth=CC_APP, headers=spoofed(*names),
                     timeout=HTTP_TIMEOUT, allow_redirects=False)
    h = echoed(r)
    assert "Authorization" not in h, dict(h)
    token = h.get("X-Access-Token", "")
    assert token.startswith("Bearer ") and jwt_claims(token.split(" ", 1)[1]).get("cid") == "cc-app", dict(h)
    assert "X-Introspection" not in h, dict(h)
    # bearer: the client's own token, moved there
    cc = authz.idp_token(*CC_APP)
    h = echoed(authz.get("/anything/rules-token", token=cc, headers=spoofed(*names)))
    assert h.get("X-Access-Token") == f"Bearer {cc}" and "Authorization" not in h, dict(h)
    assert "X-Introspection" not in h, dict(h)
    # introspection: the token, and the introspection answer (base64url JSON, no padding)
    opaque = authz.idp_token(*CC_APP, resource="api://opaque")
    h = echoed(authz.get("/anything/rules-token", token=opaque, headers=spoofed(*names)))
    assert h.get("X-Access-Token") == f"Bearer {opaque}" and "Authorization" not in h, dict(h)
    encoded = h.get("X-Introspection", "")
    assert encoded and "=" not in encoded, dict(h)
    answer = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert answer.get("active") is True and answer.get("client_id") == "cc-app", answer


def test_default_error_answers_name_no_check_and_messages_apply(authz: World):
    # rules_forbidden keeps Kong's defaults
    r = authz.get("/anything/rules-forbidden")
    assert_generic_deny(r, 401, "invalid_token", "Unauthorized")
    r = authz.get("/anything/rules-forbidden", token="not-a-token")
    assert_generic_deny(r, 401, "invalid_token", "Unauthorized")
    # rules_token has its own messages
    r = authz.get("/anything/rules-token")
    assert r.headers.get("www-authenticate", "").startswith("Basic realm=\"rules_token\""), dict(r.headers)
    assert_generic_deny(r, 401, "invalid_token", "Please authenticate")
    r = requests.get(authz.url("/anything/rules-token"), auth=("cc-app", "wrong"), timeout=HTTP_TIMEOUT,
                     allow_redirects=False)
    assert_generic_deny(r, 401, "invalid_client", "Please authenticate")
    # display_errors = true (rules_optional) keeps the detail
    r = authz.get("/anything/rules-optional")
    assert r.status_code == 401, r.text
    assert json.loads(r.text)["error_description"] == "no access token in the request", r.text
    assert 'error_description="no access token in the request"' in r.headers.get("www-authenticate", "")
