"""The e2e world's configs agree with each other: no processes started here."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT, VENV_BIN, E2E, authz_binary, in_ci, render

DEMO = ["--listen-port", "8080", "--admin-port", "9901", "--authz", "127.0.0.1:9191", "--upstream", "127.0.0.1:8000"]


def test_committed_envoy_yaml_is_the_rendered_template(tmp_path):
    out = tmp_path / "envoy.yaml"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_envoy.py"), "--out", str(out), *DEMO], check=True)
    assert out.read_text() == (ROOT / "envoy" / "envoy.yaml").read_text(), \
        "envoy/envoy.yaml is stale: scripts/render_envoy.py --out envoy/envoy.yaml " + " ".join(DEMO)


def test_envoy_accepts_the_demo_config():
    r = subprocess.run([str(VENV_BIN / "envoy"), "--mode", "validate", "-c", str(ROOT / "envoy" / "envoy.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _rendered_toml(tmp_path):
    return render(E2E / "oidc-authz.template.toml", tmp_path / "oidc-authz.toml", {
        "GRPC_PORT": "19191", "ADMIN_PORT": "19192", "ISSUER": "http://127.0.0.1:1/oauth2/default",
        "ENVOY_PORT": "18080",
    })


def test_every_policy_envoy_names_exists_in_the_e2e_config(tmp_path):
    cfg = tomllib.loads(_rendered_toml(tmp_path).read_text())
    named = set(re.findall(r"context_extensions: \{ policy: (\w+) \}", (ROOT / "envoy" / "envoy.template.yaml").read_text()))
    assert named == {"cc", "api", "introspect", "group", "login"}
    assert named <= set(cfg["policies"]), named - set(cfg["policies"])
    for r in cfg.get("routes", []):
        assert r["policy"] in cfg["policies"]


def test_oidc_authz_check_config_accepts_the_e2e_config(tmp_path):
    b = authz_binary()
    if not b.is_file():
        msg = f"oidc-authz binary {b} missing: build it (cargo build) or set OIDC_AUTHZ_BIN"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    r = subprocess.run([str(b), "check-config", "--config", str(_rendered_toml(tmp_path))],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"check-config exit {r.returncode}:\n{r.stdout}{r.stderr}"
