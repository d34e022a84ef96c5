"""Bearer tokens outside the Authorization header (bearer_token_param_type) through real Envoy and the real provider.

The policy `tokens` (tests/e2e/oidc-authz.template.toml, selected by its [[routes]] entry /anything/tokens) reads a
token from the header, the RFC 6750 `access_token` query parameter, a form body or the cookie `access_token`. Envoy
sends the body only on /anything/tokens/body (envoy/envoy.template.yaml: with_request_body). httpbin's /anything
echoes what reached it: args, form, headers.
"""

from __future__ import annotations

import time

import requests

from conftest import HTTP_TIMEOUT, World, jwt_claims
from test_bearer import CC_APP, assert_deny

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def authz_log(w: World) -> str:
    return w.components["authz"].log.read_text(errors="replace")


def post(w: World, path: str, data: str, headers: dict | None = None) -> requests.Response:
    return requests.post(w.url(path), data=data, headers={**FORM, **(headers or {})}, timeout=HTTP_TIMEOUT,
                         allow_redirects=False)


def _authz_log_with(authz: World, path: str) -> str:
    """oidc-authz's log once it holds the decision line of `path` (its writer thread may be a moment behind the
    answer; polled, generously): a check that something is NOT in the log must read the line it is about."""
    deadline = time.monotonic() + 30
    while True:
        log = authz_log(authz)
        if f'"request.path":"{path}"' in log or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert f'"request.path":"{path}"' in log, f"the decision line of {path} never came"
    return log


def test_query_token_is_allowed_and_reaches_the_upstream_only_in_authorization(authz: World):
    token = authz.idp_token(*CC_APP)
    # a path of its own: the decision line looked for below is this request's, not another test's
    r = authz.get(f"/anything/tokens/q-alone?a=1&access_token={token}&b=two")
    assert r.status_code == 200, r.text[:500]
    echo = r.json()
    assert echo["args"] == {"a": "1", "b": "two"}, "httpbin must get the other parameters, never access_token"
    assert "access_token" not in echo["url"] and token not in echo["url"]
    # the token left the query: it reaches the upstream once, in upstream_access_token_header (Authorization: Bearer)
    assert echo["headers"].get("Authorization") == f"Bearer {token}"
    assert r.text.count(token) == 1
    assert echo["headers"].get("X-User") == jwt_claims(token)["sub"] == "cc-app"
    assert token not in _authz_log_with(authz, "/anything/tokens/q-alone"), "oidc-authz logged the query token"


def test_token_in_a_cookie_is_allowed(authz: World):
    token = authz.idp_token(*CC_APP)
    r = authz.get("/anything/tokens/c", headers={"Cookie": f"theme=dark; access_token={token}"})
    assert r.status_code == 200, r.text[:500]
    assert r.json()["headers"].get("X-User") == "cc-app"


def test_bad_token_in_the_query_is_401_without_the_token(authz: World):
    token = authz.idp_token(*CC_APP)
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-6]}AAAAAA"
    r = authz.get(f"/anything/tokens/refused-query?access_token={forged}&marker=bad-query-token")
    assert_deny(r, 401, error="invalid_token", token=forged)
    assert forged not in _authz_log_with(authz, "/anything/tokens/refused-query")
    # Envoy's access log: a refused request keeps its query (nothing removed it), so the shipped format prints the
    # path without it. Envoy flushes the log about once a second: wait (generously) for this request's line.
    deadline = time.monotonic() + 30
    while True:
        envoy_log = authz.components["envoy"].log.read_text(errors="replace")
        if "/anything/tokens/refused-query" in envoy_log or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "/anything/tokens/refused-query" in envoy_log, "the request's access log line never came"
    assert forged not in envoy_log and "bad-query-token" not in envoy_log, "Envoy's access log printed the query"


def test_a_token_in_two_places_is_401(authz: World):
    token = authz.idp_token(*CC_APP)
    r = authz.get(f"/anything/tokens/q?access_token={token}", token=token)
    assert_deny(r, 401, error="invalid_token", token=token)
    assert "more than one place" in r.json()["error_description"]
    r = authz.get(f"/anything/tokens/q?access_token={token}&access_token={token}")
    assert_deny(r, 401, error="invalid_token", token=token)


def test_form_body_token_is_allowed_where_envoy_sends_the_body(authz: World):
    token = authz.idp_token(*CC_APP)
    r = post(authz, "/anything/tokens/body", f"note=hi&access_token={token}")
    assert r.status_code == 200, r.text[:500]
    echo = r.json()
    assert echo["headers"].get("X-User") == "cc-app"
    # Envoy cannot rewrite the body: the form reaches the upstream as sent (documented)
    assert echo["form"].get("note") == "hi"


def test_form_body_token_where_envoy_does_not_send_the_body_is_401(authz: World):
    """Without with_request_body the body is unseen: refused with a reason, never allowed on another token."""
    token = authz.idp_token(*CC_APP)
    r = post(authz, "/anything/tokens/nobody", f"access_token={token}")
    assert_deny(r, 401, error="invalid_token", token=token)
    assert "with_request_body" in r.json()["error_description"]
    r = post(authz, "/anything/tokens/nobody", "note=hi", headers={"Authorization": f"Bearer {token}"})
    assert_deny(r, 401, error="invalid_token", token=token)


def test_header_token_still_works_on_the_tokens_route(authz: World):
    token = authz.idp_token(*CC_APP)
    r = authz.get("/anything/tokens/h?a=1", token=token)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["args"] == {"a": "1"}
