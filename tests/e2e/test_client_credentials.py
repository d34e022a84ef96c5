"""Client credentials at the gateway (Kong + Okta seed tutorial, part 1), through real Envoy and the mock Okta:
the application sends its client id and secret (Basic); oidc-authz runs the client-credentials grant at the IdP,
forwards `Authorization: Bearer <token>` upstream and injects the token's issuer as `Issuer_Header`."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from requests.structures import CaseInsensitiveDict

from conftest import World, jwt_claims

CC_APP = ("cc-app", "cc-app-secret")
CC_READONLY = ("cc-readonly", "cc-readonly-secret")
CC_SHORT = ("cc-short", "cc-short-secret")
LOCKOUT_THRESHOLD = 5  # client_lockout_threshold's default


def echoed(resp) -> CaseInsensitiveDict:
    assert resp.status_code == 200, f"expected httpbin's 200, got {resp.status_code}: {resp.text[:500]}"
    return CaseInsensitiveDict(resp.json()["headers"])


def token_requests(world: World) -> float:
    """oidc-authz's own count of successful token-endpoint calls (Prometheus text on its admin port)."""
    text = requests.get(f"http://127.0.0.1:{world.authz_admin_port}/metrics", timeout=5).text
    m = re.search(r'^oidc_authz_idp_requests_total\{provider="okta",endpoint="token",outcome="ok"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def metric(world: World, series: str) -> float:
    """One series of oidc-authz's /metrics (0 when absent)."""
    text = requests.get(f"http://127.0.0.1:{world.authz_admin_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def token_endpoint_calls(world: World, provider: str) -> float:
    """Every call oidc-authz made to the provider's token endpoint, whatever the IdP answered."""
    return sum(
        metric(world, f'oidc_authz_idp_requests_total{{provider="{provider}",endpoint="token",outcome="{o}"}}')
        for o in ("ok", "error")
    )


def all_at_once(urls_and_auths: list[tuple[str, tuple[str, str]]]) -> list[requests.Response]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda ua: requests.get(ua[0], auth=ua[1], timeout=10), urls_and_auths))


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


def test_distinct_wrong_secrets_reach_the_provider_at_most_threshold_times(authz: World):
    """200 different guesses at one client id: the provider sees at most client_lockout_threshold of them; the
    client id is then locked out (401 + retry-after, the IdP not asked), except for a token already granted for the
    right secret. The lock-out is undone by restarting oidc-authz at the end, so later tests find cc-app usable."""
    url = authz.url("/oidcroute/get")
    try:
        first = echoed(requests.get(url, auth=CC_APP, timeout=10))["Authorization"]  # a token cached for the right secret
        before = token_endpoint_calls(authz, "okta")
        lockouts = metric(authz, 'oidc_authz_client_lockouts_total{provider="okta"}')
        answers = all_at_once([(url, ("cc-app", f"guess-{i}")) for i in range(200)])
        for r in answers:
            assert r.status_code == 401, r.text
            assert json.loads(r.text)["error"] == "invalid_client"
            assert "guess-" not in r.text and all("guess-" not in v for v in r.headers.values())
        calls = token_endpoint_calls(authz, "okta") - before
        assert 1 <= calls <= LOCKOUT_THRESHOLD, f"the provider saw {calls} of 200 guesses"
        retry = [int(r.headers["retry-after"]) for r in answers if "retry-after" in r.headers]
        assert len(retry) >= 200 - LOCKOUT_THRESHOLD and all(0 < s <= 60 for s in retry), retry[:10]
        assert metric(authz, 'oidc_authz_client_lockouts_total{provider="okta"}') == lockouts + 1
        # the token granted before for the right secret keeps working, from the cache
        assert echoed(requests.get(url, auth=CC_APP, timeout=10))["Authorization"] == first
        assert token_endpoint_calls(authz, "okta") - before == calls

        # a client id without a cached token: once locked out, even its right secret waits for the cool-down
        answers = all_at_once([(url, ("cc-short", f"guess-{i}")) for i in range(LOCKOUT_THRESHOLD)])
        assert all(r.status_code == 401 for r in answers)
        r = requests.get(url, auth=CC_SHORT, timeout=10)
        assert r.status_code == 401, r.text
        assert json.loads(r.text)["error"] == "invalid_client" and 0 < int(r.headers["retry-after"]) <= 60
        assert r.headers.get("www-authenticate", "").startswith('Basic realm="cc"')
        assert token_endpoint_calls(authz, "okta") - before == calls + LOCKOUT_THRESHOLD
    finally:
        authz.stop("authz")
        authz.start("authz")


def test_guessing_across_many_client_ids_cannot_pass_the_grant_bucket(authz: World):
    """Each client id is refused once, so no lock-out helps; the provider's grant bucket (burst 3, 1 per second on
    `okta_bucket`) bounds what reaches the IdP, and the rest is 503 + retry-after without asking it."""
    url = authz.url("/anything/cc-bucket/get")
    before = token_endpoint_calls(authz, "okta_bucket")
    throttled = metric(authz, 'oidc_authz_token_grants_throttled_total{provider="okta_bucket"}')
    start = time.monotonic()
    answers = all_at_once([(url, (f"ghost-{i}", "guess")) for i in range(100)])
    elapsed = time.monotonic() - start
    calls = token_endpoint_calls(authz, "okta_bucket") - before
    # burst, plus the rate for every second boundary the burst of requests may have crossed
    assert calls <= 3 + int(elapsed) + 1, (calls, elapsed)
    refused = [r for r in answers if r.status_code == 401]
    busy = [r for r in answers if r.status_code == 503]
    assert len(refused) + len(busy) == 100, [r.status_code for r in answers]
    assert len(refused) == calls
    for r in busy:
        assert json.loads(r.text)["error"] == "temporarily_unavailable" and r.headers["retry-after"] == "1", r.text
    assert len(busy) >= 100 - (3 + int(elapsed) + 1)
    assert metric(authz, 'oidc_authz_token_grants_throttled_total{provider="okta_bucket"}') - throttled == len(busy)
    # a real client passes once the bucket refills: the bucket throttles, it does not refuse
    deadline = time.monotonic() + 10
    while True:
        r = requests.get(url, auth=CC_APP, timeout=10)
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(int(r.headers.get("retry-after", "1")))
    assert r.status_code == 200, r.text
