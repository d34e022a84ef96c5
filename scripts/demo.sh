#!/usr/bin/env bash
# The demo (`make demo`): installs the world, builds oidc-authz, then runs scripts/demo.py, which starts
# Envoy (:8080), oidc-authz (:9191), httpbin (:8000) and the mock Okta IdP (:9000) on loopback, walks the
# tutorial steps with real requests, and keeps everything running until Ctrl-C.
#   bash scripts/demo.sh                 # interactive
#   bash scripts/demo.sh --no-wait       # walk the steps and stop (exit 1 on an unexpected answer)
#   bash scripts/demo.sh --random-ports  # free ports instead of the fixed ones
# OIDC_AUTHZ_BIN=path skips the build and runs that binary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[demo] %s\n' "$*"; }

say "1/3 installing Envoy, httpbin and the mock Okta IdP (scripts/e2e-setup.sh; quick when already done)"
bash scripts/e2e-setup.sh

if [[ -n "${OIDC_AUTHZ_BIN:-}" ]]; then
    say "2/3 OIDC_AUTHZ_BIN=$OIDC_AUTHZ_BIN: not building"
else
    if ! command -v cargo >/dev/null 2>&1; then
        say "ERROR: cargo not found; install Rust (https://rustup.rs) or set OIDC_AUTHZ_BIN" >&2
        exit 1
    fi
    say "2/3 building oidc-authz: cargo build --release --bin oidc-authz"
    say "    (a cold build takes ~5 minutes on 2 cores; later builds take seconds)"
    start=$SECONDS
    cargo build --release --bin oidc-authz
    say "    built target/release/oidc-authz in $((SECONDS - start))s"
fi

say "3/3 starting the demo"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/demo.py" "$@"
