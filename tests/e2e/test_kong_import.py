"""`oidc-authz import-kong` through real Envoy: the e2e world's four tutorial policies written as a Kong decK file
(kong-world.template.yaml) import to a config that answers the same requests with the same statuses (and the same
upstream headers) as the hand-written policies of oidc-authz.template.toml.

One world: the answers are taken with the hand-written config, oidc-authz is restarted on the same ports with the
imported one, the answers are taken again, and the hand-written config is restored for the tests that follow.
"""

from __future__ import annotations

import subprocess

import requests
from requests.structures import CaseInsensitiveDict

from browserflow import BROWSER, XHR_JSON
from conftest import E2E, World, render

CC_APP = ("cc-app", "cc-app-secret")
CC_READONLY = ("cc-readonly", "cc-readonly-secret")


def imported_config(world: World) -> tuple[str, str]:
    """Renders the decK file for this world, imports it (exit 0) and checks the result (exit 0); returns the
    config's path and the importer's report."""
    deck = render(E2E / "kong-world.template.yaml", world.tmp / "kong-world.yaml", {
        "ISSUER": world.issuer,
        "ENVOY_PORT": str(world.envoy_port),
        "HTTPBIN_PORT": str(world.httpbin_port),
    })
    out = world.tmp / "kong-import"
    out.mkdir(exist_ok=True)
    r = subprocess.run([str(world.authz_bin), "import-kong", str(deck), "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"import-kong exited {r.returncode}:\n{r.stderr}"
    config = out / "oidc-authz.toml"
    # the importer writes no [server]: this world's ports
    with open(config, "a") as f:
        f.write(f'\n[server]\ngrpc_addr = "127.0.0.1:{world.grpc_port}"\n'
                f'admin_addr = "127.0.0.1:{world.authz_admin_port}"\n')
    c = subprocess.run([str(world.authz_bin), "check-config", "--config", str(config)],
                       capture_output=True, text=True, timeout=60)
    assert c.returncode == 0, f"check-config refused the import:\n{c.stderr}\n{config.read_text()}"
    return str(config), r.stderr


def answers(world: World, tokens: dict[str, str]) -> dict[str, tuple]:
    """Status (and for an allow, the headers oidc-authz controls; for a redirect, where to) of each request."""
    def get(path, **kw):
        kw.setdefault("timeout", 10)
        return requests.get(world.url(path), allow_redirects=False, **kw)

    def bearer(t):
        return {"Authorization": f"Bearer {t}"}

    reqs = {
        "api, no token": lambda: get("/api/headers"),
        "api, token with api:read": lambda: get("/api/headers", headers=bearer(tokens["read"])),
        "api, token without api:read": lambda: get("/api/headers", headers=bearer(tokens["noscope"])),
        "api, garbage": lambda: get("/api/headers", headers=bearer("not-a-token")),
        "api, opaque": lambda: get("/api/headers", headers=bearer(tokens["opaque"])),
        "cc, no credentials": lambda: get("/oidcroute/headers"),
        "cc, client credentials": lambda: get("/oidcroute/headers", auth=CC_APP),
        "cc, wrong secret": lambda: get("/oidcroute/headers", auth=("cc-app", "not-the-secret")),
        "cc, read-only client": lambda: get("/oidcroute/headers", auth=CC_READONLY),
        "cc, bearer": lambda: get("/oidcroute/headers", headers=bearer(tokens["read"])),
        "introspect, opaque": lambda: get("/introspect/headers", headers=bearer(tokens["opaque"])),
        "introspect, garbage": lambda: get("/introspect/headers", headers=bearer("not-a-token")),
        "group, browser": lambda: get("/group/headers", headers=BROWSER),
        "group, xhr": lambda: get("/group/headers", headers=XHR_JSON),
        "group, token not in kong_group": lambda: get("/group/headers", headers=bearer(tokens["read"])),
        "public": lambda: get("/public/get"),
    }
    out = {}
    for name, call in reqs.items():
        r = call()
        detail = None
        if r.status_code == 200 and "headers" in r.json():
            h = CaseInsensitiveDict(r.json()["headers"])
            detail = tuple(h.get(k) for k in ("X-User", "X-Issuer", "X-Client-Id", "Issuer-Header"))
        elif r.status_code == 302:
            detail = r.headers["location"].split("?")[0]
        out[name] = (r.status_code, detail)
    return out


def test_imported_kong_config_answers_like_the_hand_written_policies(authz: World):
    tokens = {
        "read": authz.idp_token(*CC_APP, scope="api:read"),
        "noscope": authz.idp_token(*CC_APP, scope=None),
        "opaque": authz.idp_token(*CC_APP, scope="api:read", resource="api://opaque"),
    }
    config, report = imported_config(authz)
    assert "sessions do not carry over" in report, report
    before = answers(authz, tokens)
    # the requests tell the policies apart (a comparison of all-401s would prove nothing)
    assert before["api, token with api:read"][0] == 200, before
    assert before["cc, client credentials"][0] == 200, before
    assert before["introspect, opaque"][0] == 200, before
    assert before["group, browser"][0] == 302, before
    assert before["api, no token"][0] == 401, before
    assert before["group, token not in kong_group"][0] == 403, before

    authz.stop("authz")
    authz.authz_config = lambda: config  # the World renders its config at start: use the imported one
    try:
        authz.start("authz")
        after = answers(authz, tokens)
    finally:
        authz.stop("authz")
        del authz.authz_config
        authz.start("authz")
    diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not diff, f"imported config answers differently (hand-written, imported): {diff}"
