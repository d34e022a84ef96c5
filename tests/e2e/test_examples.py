"""The configs under examples/ are valid for the real binary, and the Istio manifests agree with their config.

No processes are started except `oidc-authz check-config`; nothing talks to Okta or Kubernetes.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, authz_binary, in_ci

EXAMPLES = ROOT / "examples"
ISTIO = EXAMPLES / "istio"
SESSION_SECRET = base64.b64encode(os.urandom(32)).decode()  # random, as check-config demands; for validation only


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    b = authz_binary()
    if not b.is_file():
        msg = f"oidc-authz binary {b} missing: build it (cargo build) or set OIDC_AUTHZ_BIN"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_AUTHZ_")}
    return subprocess.run([str(b), "check-config", "--config", str(path)], capture_output=True, text=True,
                          timeout=30, env={**clean, **(env or {})})


def assert_valid(path: Path, env: dict[str, str] | None = None) -> None:
    r = check_config(path, env)
    assert r.returncode == 0, f"check-config {path} exit {r.returncode}:\n{r.stdout}{r.stderr}"


def istio_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def one(docs: list[dict], kind: str) -> dict:
    [d] = [d for d in docs if d["kind"] == kind]
    return d


# ---------------------------------------------------------------------------------------------------------------
# every example config passes check-config
# ---------------------------------------------------------------------------------------------------------------
def test_compose_config_is_valid():
    assert_valid(EXAMPLES / "compose" / "oidc-authz.toml")


def test_istio_config_is_valid_with_its_secrets_from_the_environment():
    path = ISTIO / "oidc-authz.toml"
    r = check_config(path)
    assert r.returncode == 64 and "session_secret" in r.stdout + r.stderr, "the secrets are expected from the env"
    assert_valid(path, {"OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET": "x",
                        "OIDC_AUTHZ_POLICIES__LOGIN__SESSION_SECRET": SESSION_SECRET})


def test_okta_config_is_valid_once_its_secrets_exist(tmp_path):
    src = EXAMPLES / "okta" / "oidc-authz.toml"
    text = src.read_text()
    # as shipped, it names a secret file that exists only where it is deployed
    r = check_config(src)
    assert r.returncode == 64 and "client_secret_file" in r.stdout + r.stderr
    secret = tmp_path / "okta-client-secret"
    secret.write_text("x\n")
    line = re.search(r'^client_secret_file = "(.*)"$', text, re.M)
    assert line, "the Okta example should read its client secret from a file"
    copy = tmp_path / "oidc-authz.toml"
    copy.write_text(text.replace(line.group(0), f'client_secret_file = "{secret}"'))
    assert_valid(copy, {"OIDC_AUTHZ_POLICIES__GROUP__SESSION_SECRET": SESSION_SECRET,
                        "OIDC_AUTHZ_POLICIES__LOGIN__SESSION_SECRET": SESSION_SECRET})


def test_okta_config_has_the_policies_envoy_selects():
    cfg = tomllib.loads((EXAMPLES / "okta" / "oidc-authz.toml").read_text())
    named = set(re.findall(r"context_extensions: \{ policy: (\w+) \}", (ROOT / "envoy" / "envoy.template.yaml").read_text()))
    assert named == set(cfg["policies"]), (named, set(cfg["policies"]))


# The Okta example is the e2e world's tutorial policies with Okta's addresses and secrets: it cannot drift from what
# the e2e suite proves. Addresses and secrets may differ; so may these production tunables, each for a reason:
OKTA_TUNABLES = {
    "cache_introspection_secs",  # the e2e `introspect` policy caches nothing, to show a revocation at once
    "cache_ttl_neg_secs",        # ... and so has no negative cache either
    "introspect_jwt_tokens",     # Okta access tokens are JWTs; the mock's introspected tokens are opaque
    "backchannel_logout_path",   # the mock provider sends OpenID Connect back-channel logout; an Okta org's
                                 # default authorization server does not (set it where your provider does)
    "display_errors",            # the e2e `login` policy shows the detailed texts its tests read; production keeps
                                 # the default (false: 401/403 answers name no check)
}
ADDRESSES = {"redirect_uri", "post_logout_redirect_uri"}  # the same path on another origin
SECRETS = {"session_secret", "session_secret_file", "client_secret", "client_secret_file"}


def e2e_template() -> dict:
    text = (ROOT / "tests" / "e2e" / "oidc-authz.template.toml").read_text()
    return tomllib.loads(re.sub(r"\{\{[A-Z_]+\}\}", "1", text))


def test_okta_policies_are_the_e2e_worlds_with_other_addresses_and_secrets():
    okta = tomllib.loads((EXAMPLES / "okta" / "oidc-authz.toml").read_text())
    e2e = e2e_template()
    problems = []
    for name, policy in okta["policies"].items():
        assert name in e2e["policies"], f"policy {name} of the Okta example is not in the e2e world"
        theirs = e2e["policies"][name]
        for key in sorted(set(policy) | set(theirs)):
            if key in OKTA_TUNABLES or key in SECRETS:
                continue
            mine, other = policy.get(key), theirs.get(key)
            if key in ADDRESSES and mine is not None and other is not None:
                mine, other = re.sub(r"^https?://[^/]+", "", mine), re.sub(r"^https?://[^/]+", "", other)
                if key == "post_logout_redirect_uri":
                    continue  # where users land after logout is the app's page, any path
            if mine != other:
                problems.append(f"policies.{name}.{key}: Okta example {mine!r}, e2e world {other!r}")
    assert not problems, "\n".join(problems)


def test_okta_provider_is_the_e2e_worlds_with_other_addresses_and_secrets():
    okta = tomllib.loads((EXAMPLES / "okta" / "oidc-authz.toml").read_text())["providers"]["okta"]
    e2e = e2e_template()["providers"]["okta"]
    # the e2e world names a second API for its opaque tokens, and has no clock leeway to expire a 3 s token
    for key in set(okta) | set(e2e):
        if key in SECRETS or key in {"issuer", "client_id", "audiences", "leeway_secs"}:
            continue
        assert okta.get(key) == e2e.get(key), f"providers.okta.{key}: {okta.get(key)!r} vs {e2e.get(key)!r}"
    assert set(okta["audiences"]) <= set(e2e["audiences"])


# ---------------------------------------------------------------------------------------------------------------
# Istio: manifests and config agree
# ---------------------------------------------------------------------------------------------------------------
def istio_config() -> dict:
    return tomllib.loads((ISTIO / "oidc-authz.toml").read_text())


def port_of(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def test_configmap_carries_the_istio_config_verbatim():
    cm = one(istio_docs("deployment.yaml"), "ConfigMap")
    assert cm["data"]["config.toml"] == (ISTIO / "oidc-authz.toml").read_text(), \
        "deployment.yaml's ConfigMap differs from examples/istio/oidc-authz.toml"


def test_every_path_istio_sends_has_a_route():
    pol = one(istio_docs("authorizationpolicy.yaml"), "AuthorizationPolicy")
    assert pol["spec"]["action"] == "CUSTOM"
    paths = [p for rule in pol["spec"]["rules"] for to in rule["to"] for p in to["operation"]["paths"]]
    prefixes = {r["path_prefix"].rstrip("/") for r in istio_config()["routes"] if "path_prefix" in r}
    for p in paths:
        assert p.endswith("/*"), f"{p}: expected a prefix rule"
        assert p[:-2] in prefixes, f"Istio sends {p} but oidc-authz.toml has no route for it (-> 403)"
    assert prefixes == {p[:-2] for p in paths}, "routes that Istio never sends (or vice versa)"


def test_provider_names_the_service_and_fails_closed():
    mesh = istio_docs("meshconfig.yaml")[0]["spec"]["meshConfig"]
    [prov] = mesh["extensionProviders"]
    pol = one(istio_docs("authorizationpolicy.yaml"), "AuthorizationPolicy")
    assert pol["spec"]["provider"]["name"] == prov["name"]
    grpc = prov["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False
    docs = istio_docs("deployment.yaml")
    svc = one(docs, "Service")
    assert grpc["service"] == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    [sp] = [p for p in svc["spec"]["ports"] if p["port"] == grpc["port"]]
    assert sp["appProtocol"] == "grpc"
    [c] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    cport = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert cport[sp["targetPort"]] == port_of(istio_config()["server"]["grpc_addr"])


def test_deployment_probes_secret_and_non_root():
    dep = one(istio_docs("deployment.yaml"), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    cport = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin = port_of(istio_config()["server"]["admin_addr"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert cport[c[probe]["httpGet"]["port"]] == admin
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET"]["valueFrom"]
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001  # the Dockerfile's USER
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # the config is mounted where the args read it
    cfg_path = c["args"][c["args"].index("--config") + 1]
    [m] = [m for m in c["volumeMounts"] if cfg_path.startswith(m["mountPath"].rstrip("/") + "/")]
    [v] = [v for v in pod["volumes"] if v["name"] == m["name"]]
    cm = one(istio_docs("deployment.yaml"), "ConfigMap")
    assert v["configMap"]["name"] == cm["metadata"]["name"]
    assert Path(cfg_path).name in cm["data"]
