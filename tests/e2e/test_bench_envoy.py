"""`make bench-envoy`'s Envoy bootstraps (bench/*.yaml, rendered by scripts/bench_envoy.py) are valid for this Envoy."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, VENV_BIN, authz_binary


def test_every_bench_envoy_bootstrap_passes_envoy_validate():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_envoy.py"), "--validate-only",
                        "--envoy", str(VENV_BIN / "envoy"),
                        "--bin", str(authz_binary())], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # direct, jwt-cached, jwt-nocache, ext-authz and its 4 variants, jwt-offload (from `envoy-config`)
    assert r.stdout.count(": ok") == 9, r.stdout
