"""Several issuers on one policy, through real Envoy and real oidc-provider instances.

A module fixture starts two more mock IdPs (examples/okta-mock-idp on their own ports, so their own issuers and
signing keys), adds a provider for the second and a policy listing both IdPs to oidc-authz's config, and restarts
oidc-authz; when the module is done it stops them and oidc-authz, which the next test's `authz` fixture starts again
on the template alone. Only this module pays for the extra IdPs.

    /anything/issuers  ->  policies.issuers, providers = ["second", "okta"]  (the third IdP is listed nowhere)
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from conftest import HTTP_TIMEOUT, IDP_DIR, Component, World, free_ports, jwt_claims, require
from world import IDP_READY, WORLD_DIR_ENV

CC_APP = ("cc-app", "cc-app-secret")

# `second` first: a token naming no listed issuer must not fall back to it (its JWKS may be refetched at once,
# jwks_min_refetch_secs = 0, so such a fallback would show in the metrics)
EXTRA = """
[providers.second]
issuer = "{issuer}"
audiences = ["api://default"]
leeway_secs = 0
http_timeout_ms = 800
jwks_min_refetch_secs = 0

[policies.issuers]
providers = ["second", "okta"]
auth_methods = ["bearer"]
display_errors = true
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["iss", "sub"]
upstream_headers_names  = ["x-issuer", "x-user"]

[[routes]]
path_prefix = "/anything/issuers"
policy = "issuers"
"""


class ExtraIdp:
    """One more mock IdP on a free port: its own issuer (http://127.0.0.1:PORT/oauth2/default) and keys."""

    def __init__(self, world: World, name: str):
        port = free_ports(1)[0]
        self.issuer = ""
        self.component = Component(
            name, world.tmp / f"{name}.log",
            lambda: ["node", str(IDP_DIR / "server.mjs"), "--port", str(port)],
            self._ready, cwd=IDP_DIR, env={WORLD_DIR_ENV: str(world.tmp)},
        )

    def _ready(self, c: Component) -> bool:
        m = IDP_READY.search(c.new_output())
        if m:
            self.issuer = m.group(1).rstrip("/")
        return m is not None

    def token(self, client: tuple[str, str] = CC_APP) -> str:
        """A client-credentials access token of this IdP."""
        meta = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT).json()
        r = requests.post(meta["token_endpoint"], data={"grant_type": "client_credentials", "scope": "api:read"},
                          auth=client, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["access_token"]


def idp_calls(world: World) -> dict[str, float]:
    """oidc-authz's count of its calls to identity providers, per series (any provider, endpoint, outcome)."""
    text = requests.get(f"http://127.0.0.1:{world.authz_admin_port}/metrics", timeout=HTTP_TIMEOUT).text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(oidc_authz_idp_requests_total\{[^}]*\}) (\S+)$", text, re.M)}


@pytest.fixture(scope="module")
def issuers(world: World):
    require(world, "httpbin", "envoy", "idp")
    second, third = ExtraIdp(world, "idp2"), ExtraIdp(world, "idp3")
    try:
        # from this thread: a process dies with the thread that started it (PR_SET_PDEATHSIG), so no thread pool
        second.component.start()
        third.component.start()
        world.authz_extra = EXTRA.format(issuer=second.issuer)
        world.stop("authz")
        require(world, "authz")
        yield world, second, third
    finally:
        world.authz_extra = ""
        world.stop("authz")  # the next `authz` fixture restarts it on the template alone
        second.component.stop()
        third.component.stop()


def echoed(resp) -> CaseInsensitiveDict:
    assert resp.status_code == 200, f"expected httpbin's 200, got {resp.status_code}: {resp.text[:500]}"
    return CaseInsensitiveDict(resp.json()["headers"])


def test_tokens_of_both_listed_issuers_pass_with_their_issuer_upstream(issuers):
    world, second, _ = issuers
    assert second.issuer != world.issuer
    for issuer, token in ((world.issuer, world.idp_token(*CC_APP)), (second.issuer, second.token())):
        assert jwt_claims(token)["iss"] == issuer
        h = echoed(world.get("/anything/issuers", token=token))
        assert h["X-Issuer"] == issuer
        assert h["X-User"] == "cc-app"
    # a one-provider policy on the same service still refuses the second issuer
    r = world.get("/api/headers", token=second.token())
    assert r.status_code == 401, r.text


def test_an_issuer_not_listed_is_refused_without_calling_any_idp(issuers):
    world, _, third = issuers
    token = third.token()
    before = idp_calls(world)
    r = world.get("/anything/issuers", token=token)
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "no-store" in r.headers["cache-control"]
    assert r.json()["error_description"] == "the token was issued by another issuer"
    assert token not in r.text
    assert idp_calls(world) == before, "no discovery, JWKS or other call for an issuer not listed"


def test_a_token_of_one_issuer_claiming_the_other_is_refused(issuers):
    """The first IdP's token with its payload swapped for one naming the second issuer: the `iss` picks the second
    provider, whose keys do not verify the signature. This is a tampered token (the signature no longer covers the
    payload); the case of a token the first IdP really signed with the second's issuer in it needs the first IdP's
    private key, which oidc-provider keeps in memory: tests/integration/issuers.rs covers it with the in-process
    mock IdP (`a_token_signed_by_one_issuer_claiming_the_other_is_refused`)."""
    world, second, _ = issuers
    token = world.idp_token(*CC_APP)
    head, _, sig = token.split(".")
    claims = jwt_claims(token)
    claims["iss"] = second.issuer
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    r = world.get("/anything/issuers", token=f"{head}.{forged_payload}.{sig}")
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
