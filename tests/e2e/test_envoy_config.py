"""`oidc-authz envoy-config` (issue 14 items 3 and 4) through real Envoy.

* The shipped Envoy config (envoy/envoy.template.yaml, so envoy/envoy.yaml and envoy/envoy.compose.yaml too) sends
  exactly the headers `envoy-config` derives from the e2e config: the rest of the suite passing through it is the
  proof that the policies need no other header.
* `--offload-bearer`: an Envoy built from the shipped one with the generated jwt_authn + RBAC in place of ext_authz on
  /api/ answers the bearer cases of test_bearer.py with the same statuses; the differences in body and
  WWW-Authenticate are listed in OFFLOAD_DIFFERENCES (README, Envoy section).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
import yaml

from browserflow import idp_user_tokens
from conftest import ROOT, VENV_BIN, Component, World, free_ports, jwt_claims, require

CC_APP = ("cc-app", "cc-app-secret")
CC_READONLY = ("cc-readonly", "cc-readonly-secret")
CC_SHORT = ("cc-short", "cc-short-secret")
EXT_AUTHZ = "envoy.filters.http.ext_authz"
JWT_AUTHN = "envoy.filters.http.jwt_authn"


def envoy_config(world: World, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(world.authz_bin), "envoy-config", "--config", str(world.authz_config()),
                           "--format", "json", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def rendered_envoy(world: World, port: int, admin: int) -> dict:
    text = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_envoy.py"), "--out", "-",
         "--listen-port", str(port), "--admin-port", str(admin),
         "--authz", f"127.0.0.1:{world.grpc_port}", "--upstream", f"127.0.0.1:{world.httpbin_port}"],
        check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(text)


def hcm_of(boot: dict) -> dict:
    return boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def ext_authz_of(hcm: dict) -> dict:
    return next(f for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ)["typed_config"]


# ---- item 3: the shipped config sends what envoy-config derives -----------------------------------------------
def test_shipped_envoy_sends_exactly_the_headers_envoy_config_derives(authz: World):
    r = envoy_config(authz)
    assert r.returncode == 0, r.stderr
    gen = json.loads(r.stdout)
    generated = ext_authz_of({"http_filters": gen["http_filters"]})
    shipped = ext_authz_of(hcm_of(rendered_envoy(authz, 1, 2)))
    assert shipped["allowed_headers"] == generated["allowed_headers"], (
        "envoy/envoy.template.yaml's allowed_headers differ from `oidc-authz envoy-config` of the e2e config:\n"
        + yaml.safe_dump(generated["allowed_headers"]))
    assert shipped["failure_mode_allow"] is False and shipped["include_peer_certificate"] is False
    # the back-channel logout route sends its body, as the generated route does
    assert [r["match"] for r in gen["routes"]] == [{"path": "/oauth2/backchannel-logout"}]


def test_envoy_config_yaml_is_what_envoy_accepts(authz: World, tmp_path):
    """The default (YAML) output parses as the same document as the JSON one."""
    y = subprocess.run([str(authz.authz_bin), "envoy-config", "--config", str(authz.authz_config())],
                       capture_output=True, text=True, timeout=60)
    assert y.returncode == 0, y.stderr
    assert yaml.safe_load(y.stdout) == json.loads(envoy_config(authz).stdout)


def test_envoy_config_refuses_a_bad_config_with_64(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[policies.x]\nprovider = \"nope\"\n")
    from world import authz_binary
    r = subprocess.run([str(authz_binary()), "envoy-config", "--config", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 64, (r.returncode, r.stderr)
    assert r.stdout == ""


# ---- item 4: the same bearer cases through jwt_authn + RBAC ----------------------------------------------------
@pytest.fixture(scope="module")
def offloaded(world: World):
    """An Envoy like the shipped one whose /api/ route is verified by the generated jwt_authn + RBAC (no ext_authz
    hop); (its port, the generator's notes)."""
    require(world, "httpbin", "envoy", "idp", "authz")
    jwks_uri = world.discovery()["jwks_uri"]
    r = envoy_config(world, "--offload-bearer", env={"OIDC_AUTHZ_PROVIDERS__OKTA__JWKS_URI": jwks_uri})
    assert r.returncode == 0, r.stderr
    gen = json.loads(r.stdout)
    assert JWT_AUTHN in gen["per_route"]["api"], gen["per_route"]["api"]
    port, admin = free_ports(2)
    boot = rendered_envoy(world, port, admin)
    hcm = hcm_of(boot)
    offloaded_routes = 0
    for vh in hcm["route_config"]["virtual_hosts"]:
        for route in vh["routes"]:
            per = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
            policy = per.get("check_settings", {}).get("context_extensions", {}).get("policy")
            if policy and JWT_AUTHN in gen["per_route"].get(policy, {}):
                route["typed_per_filter_config"] = gen["per_route"][policy]
                offloaded_routes += 1
    assert offloaded_routes == 1, "only /api/ names the bearer-only policy api"
    extra = [f for f in gen["http_filters"] if f["name"] != EXT_AUTHZ]
    hcm["http_filters"] = extra + hcm["http_filters"]
    boot["static_resources"]["clusters"].extend(gen.get("clusters", []))
    tmp = world.tmp / f"offload-{port}"
    tmp.mkdir(exist_ok=True)
    cfg = tmp / "envoy-offload.yaml"
    cfg.write_text(yaml.safe_dump(boot, sort_keys=False))
    envoy = Component(
        "envoy-offload", tmp / "envoy-offload.log",
        lambda: [str(VENV_BIN / "envoy"), "-c", str(cfg), "--disable-hot-restart", "--base-id", str(port),
                 "--concurrency", "1", "-l", "warning"],
        lambda c: requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200)
    envoy.start()
    try:
        yield port, r.stderr
    finally:
        envoy.stop()


def via(port: int, path: str, token: str | None = None, headers: dict | None = None) -> requests.Response:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    return requests.get(f"http://127.0.0.1:{port}{path}", headers=h, timeout=10, allow_redirects=False)


# Where the two forms answer differently (README, Envoy section). Keys: case name; values: (ext_authz status,
# jwt_authn + RBAC status). Every other case must give the same status.
OFFLOAD_DIFFERENCES = {
    # jwt_authn answers a token for another audience with 403 ("Audiences in Jwt are not allowed")
    "wrong audience": (401, 403),
    # an ID token verifies in jwt_authn (issuer, signature); the RBAC rule refusing a `nonce` makes it 403
    "id token": (401, 403),
}


def bearer_cases(world: World) -> dict:
    """The bearer cases of test_bearer.py, each a function (port) -> response."""
    good = world.idp_token(*CC_APP, scope="api:read")
    readonly = world.idp_token(*CC_READONLY, scope=None)
    other_aud = world.idp_token(*CC_APP, resource="api://other")
    head, payload, sig = good.split(".")
    forged = f"{head}.{payload}.{sig[:-6]}AAAAAA"
    id_token = idp_user_tokens(world, "alice")["id_token"]
    spoof = {"X-User": "attacker", "X-Issuer": "https://evil.example", "X-Client-Id": "attacker"}
    return {
        "good token": lambda p: via(p, "/api/headers", good),
        "good token, spoofed claim headers": lambda p: via(p, "/api/headers", good, spoof),
        "no token": lambda p: via(p, "/api/headers"),
        "no token, spoofed header": lambda p: via(p, "/api/headers", headers={"X-User": "attacker"}),
        "garbage token": lambda p: via(p, "/api/headers", "not-a-jwt." + uuid.uuid4().hex),
        "forged signature": lambda p: via(p, "/api/headers", forged),
        "wrong audience": lambda p: via(p, "/api/headers", other_aud),
        "missing scope": lambda p: via(p, "/api/headers", readonly),
        "id token": lambda p: via(p, "/api/headers", id_token),
        "underscore spelling": lambda p: via(p, "/api/headers", good, {"X_User": "mallory"}),
    }


def test_offloaded_bearer_answers_the_bearer_cases_with_the_same_statuses(authz: World, offloaded):
    port, notes = offloaded
    # the policies that stay on ext_authz are listed with a reason
    assert "policy cc: stays on ext_authz" in notes and "policy group: stays on ext_authz" in notes, notes
    assert "policy api:" not in notes, notes
    seen = {}
    for name, send in bearer_cases(authz).items():
        a, b = send(authz.envoy_port), send(port)
        seen[name] = (a.status_code, b.status_code)
        # what differs besides the status (the README's list; `pytest -s` shows it)
        for label, r in (("ext_authz", a), ("jwt_authn", b)):
            print(f"{name} | {label} | {r.status_code} | www-authenticate: {r.headers.get('www-authenticate')!r} "
                  f"| content-type: {r.headers.get('content-type')!r} | body: {r.text[:90]!r}")
        for r in (a, b):
            if r.status_code == 200:
                h = {k.lower(): v for k, v in r.json()["headers"].items()}
                assert h.get("x-user") == "cc-app", (name, h)
                assert h.get("x-issuer") == authz.issuer, (name, h)
                assert "attacker" not in json.dumps(h) and "evil.example" not in json.dumps(h), (name, h)
            elif r.status_code in (401, 403):
                assert "attacker" not in r.text
    expected = {name: OFFLOAD_DIFFERENCES.get(name, (s[0], s[0])) for name, s in seen.items()}
    assert seen == expected, json.dumps(seen, indent=1)
    assert seen["good token"] == (200, 200) and seen["missing scope"] == (403, 403)
    assert seen["no token"] == (401, 401) and seen["underscore spelling"] == (400, 400)


def test_offloaded_bearer_refuses_an_expired_token(authz: World, offloaded):
    """cc-short tokens live 3 s; the provider has leeway_secs = 0 (jwt_authn clock_skew_seconds = 1, its least).
    The token is first shown after it expired: jwt_authn's cache keeps a token it verified and checks its `exp`
    with its own skew (it still passed 1.5 s after `exp` here; see OFFLOAD_DIFFERENCES in the README text)."""
    port, _ = offloaded
    token = authz.idp_token(*CC_SHORT)
    exp = jwt_claims(token)["exp"]
    assert exp - time.time() < 10, "cc-short should get a short-lived token"
    time.sleep(max(0.0, exp - time.time()) + 2.5)
    assert via(port, "/api/headers", token).status_code == 401
    assert via(authz.envoy_port, "/api/headers", token).status_code == 401


def test_offload_leaves_every_other_route_on_ext_authz(authz: World, offloaded):
    """A login route through the offloading Envoy still redirects a browser to the IdP (ext_authz answered)."""
    port, _ = offloaded
    r = via(port, "/login/get", headers={"Accept": "text/html"})
    assert r.status_code == 302 and r.headers["location"].startswith(authz.issuer), (r.status_code, r.headers)
