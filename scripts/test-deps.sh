#!/usr/bin/env bash
# What `cargo test` needs besides Rust: Debian's redis-server and redis-cli (the store tests start their own
# servers, a single node and a three-node cluster, on loopback). Installs them when missing (apt-get; root or sudo).
set -euo pipefail
say() { echo "[test-deps] $*"; }
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    say "redis present: $(redis-server --version | cut -d' ' -f3)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "ERROR: redis-server missing and no apt-get: install Redis 6+ (redis-server and redis-cli) yourself" >&2
    exit 1
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 && SUDO="sudo" || { say "ERROR: installing redis-server needs root" >&2; exit 1; }
fi
say "installing Debian redis-server (apt-get update + install)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package may start a system instance on 6379; the tests use their own servers on free ports.
say "redis installed: $(redis-server --version | cut -d' ' -f3)"
