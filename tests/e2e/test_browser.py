"""A real browser logs in: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core in
tests/e2e/browser/login.mjs) opens /login/headers through Envoy, is sent to the mock Okta login form by oidc-authz,
signs in as alice and lands back on /login/headers, whose httpbin echo shows what reached the upstream.

What a requests-based driver (test_login.py) cannot show: a browser's own cookie rules (4096-byte limit per
cookie, SameSite=Lax on the IdP -> app redirect, cookies shared across ports of one host) and its redirect handling.

Needs /usr/bin/chromium and tests/e2e/browser/node_modules (scripts/e2e-setup.sh installs both): skipped without
them, FAILED with CI=true. The screenshot of the final page is kept in the world's temp dir (browser-login.png).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from requests.structures import CaseInsensitiveDict

from conftest import E2E, World, in_ci, jwt_claims

BROWSER_DIR = E2E / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


def need(ok: bool, why: str) -> None:
    if ok:
        return
    if in_ci():
        pytest.fail(f"browser test unavailable with CI=true: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def browser_ready():
    need(CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} missing: run scripts/e2e-setup.sh")
    need(shutil.which("node") is not None, "node not found on PATH")
    need((BROWSER_DIR / "node_modules" / "playwright-core").is_dir(),
         f"{BROWSER_DIR}/node_modules missing: run scripts/e2e-setup.sh")


def test_chromium_logs_in_as_alice(browser_ready, authz: World):
    shot = authz.tmp / "browser-login.png"
    shot.unlink(missing_ok=True)
    cmd = ["node", str(BROWSER_DIR / "login.mjs"), "--url", authz.url("/login/headers"), "--user", "alice",
           "--screenshot", str(shot), "--chromium", str(CHROMIUM)]
    try:
        p = subprocess.run(cmd, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"login.mjs did not finish in 90 s\nstderr:\n{e.stderr}", pytrace=False)
    (authz.tmp / "browser-login.log").write_text(p.stderr)
    assert p.returncode == 0, f"login.mjs failed ({p.returncode}); screenshot {shot}\nstderr:\n{p.stderr}"

    echo = json.loads(p.stdout)
    h = CaseInsensitiveDict(echo["headers"])
    assert h.get("X-User") == "alice", f"{dict(h)}\nstderr:\n{p.stderr}"
    auth = h.get("Authorization", "")
    assert auth.startswith("Bearer "), f"no bearer token upstream: {dict(h)}"
    claims = jwt_claims(auth[len("Bearer "):])
    assert claims["sub"] == "alice" and claims["iss"] == authz.issuer, claims
    cookie_names = [c.split("=", 1)[0].strip() for c in h.get("Cookie", "").split(";") if c.strip()]
    assert not [n for n in cookie_names if n.startswith("oidc_authz_")], \
        f"oidc-authz's cookies reached the upstream: {cookie_names}"

    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot at {shot}"
