"""The end-to-end world: real Envoy -> oidc-authz (ext_authz gRPC) -> httpbin, with the mock Okta IdP.

Processes and configs are managed by tests/e2e/world.py (shared with scripts/demo.py); this file wraps them in
pytest fixtures. Every component runs as its own process on free loopback ports picked once per session, logs to
a file in a temp dir, and is restarted on the same port by `world.start(name)`, so rendered configs stay valid.

Components start lazily:
  * `world` (session fixture) starts httpbin and Envoy: enough for the `/public/` route and the fail-closed checks.
  * `idp` / `authz` fixtures also start the mock IdP (examples/okta-mock-idp/server.mjs) and oidc-authz
    (binary from $OIDC_AUTHZ_BIN, else target/debug/oidc-authz; never built here).
When a piece is missing (no binary yet, no server.mjs yet), tests that need it are SKIPPED with the reason, except
with CI=true, where they FAIL. So `pytest tests/e2e -k public` runs without the Rust binary.

Environment knobs: OIDC_AUTHZ_BIN, E2E_KEEP=1 (keep the temp dir with logs even on success), CI=true.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

# re-exported: the tests import these from conftest
from world import (  # noqa: F401
    E2E, HTTP_TIMEOUT, IDP_DIR, ROOT, VENV_BIN, Component, ReplicaWorld, StartError, Unavailable, World,
    authz_binary,
    free_ports, in_ci, jwt_claims, jwt_header, port_open, processes_of, render, tail,
)

# ---------------------------------------------------------------------------------------------------------------
# pytest wiring
# ---------------------------------------------------------------------------------------------------------------
_WORLD: World | None = None


def _on_sigterm(signum, frame):  # let finally/atexit run when the runner is terminated
    raise SystemExit(128 + signum)


def require(world: World, *names: str) -> World:
    """Start the named components or skip (fail with CI=true) when they cannot exist on this checkout."""
    try:
        return world.ensure(*names)
    except Unavailable as e:
        if in_ci():
            pytest.fail(f"e2e component unavailable with CI=true: {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def world():
    global _WORLD
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="oidc-authz-e2e-"))
    w = World(tmp)
    _WORLD = w
    atexit.register(w.close)
    try:
        require(w, "httpbin", "envoy")
        yield w
    except BaseException:
        w.failed = True
        raise
    finally:
        w.close()


@pytest.fixture
def idp(world: World) -> World:
    """The world with the mock IdP running."""
    return require(world, "idp")


@pytest.fixture
def authz(world: World) -> World:
    """The world with the mock IdP and oidc-authz running (restarted if a test stopped them)."""
    return require(world, "httpbin", "envoy", "idp", "authz")


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None and _WORLD is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
        _WORLD.failed = True


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    w = _WORLD
    if w is None:
        return
    if exitstatus != 0 or w.failed:
        terminalreporter.section("e2e world logs")
        terminalreporter.write_line(w.describe())
    else:
        terminalreporter.write_line(f"e2e logs: {w.tmp}" + ("" if os.environ.get("E2E_KEEP") else " (removed)"))


def pytest_unconfigure(config):
    w = _WORLD
    if w is None:
        return
    w.close()
    if not w.failed and not os.environ.get("E2E_KEEP"):
        shutil.rmtree(w.tmp, ignore_errors=True)
