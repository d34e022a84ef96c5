#!/usr/bin/env bash
# Instructions per Check of the release server under callgrind: a figure a busy machine does not blur.
#
#   scripts/callgrind_checks.sh [SCENARIO...]
#
# Scenarios: noop (the no-op Check server, `loadgen noop`), same-jwt, fresh-jwt (a never-seen RS256 token each
# Check), session (cookie), session-store (a Redis of its own), cc-cached, intro-cached, and same-jwt-log (same-jwt
# logging as shipped: `info`, one line per decision, to a file; every other scenario runs with RUST_LOG=warn like
# `loadgen bench`). Default: all of them. `noop-as-S` (named only, after S in the same call): the no-op answering
# every Check with the answer the server gave S's last Check (`loadgen noop --answer-file`): the answer's share.
#
# Each scenario starts the server under `valgrind --tool=callgrind`; `loadgen count` sends W warm-up Checks,
# zeroes the counters (`callgrind_control -z`), sends N Checks one at a time, and dumps (`callgrind_control -d`):
# the dump holds exactly those N Checks (startup and warm-up excluded), and
# `callgrind_annotate OUT/SCENARIO.PID.1` shows where they went. Prints `SCENARIO instructions_per_check`.
#
# Environment: REL (the release target dir, default target/release; build it with
# `cargo build --release --bin oidc-authz --example loadgen`), N (default 1000), W (default 50), OUT (default
# /tmp/callgrind-checks); BIN, LOADGEN and NOOP override the server, the client and the no-op server's binary
# (the client needs `loadgen count`; an older server or no-op can be measured with a newer client).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REL=${REL:-$ROOT/target/release}
N=${N:-1000}
W=${W:-50}
OUT=${OUT:-/tmp/callgrind-checks}
LOADGEN=${LOADGEN:-$REL/examples/loadgen}   # the client (any build: its speed is not counted)
NOOP=${NOOP:-$LOADGEN}                      # the loadgen whose `noop` is measured (a release build)
BIN=${BIN:-$REL/oidc-authz}
mkdir -p "$OUT"
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(noop same-jwt same-jwt-log fresh-jwt session session-store cc-cached intro-cached)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL PID / wait_tcp PORT PID: until it answers (PID still running), at most 5 minutes.
wait_http() { for _ in $(seq 1 1200); do kill -0 "$2" || break; curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.25; done; echo "never ready: $1" >&2; return 1; }
wait_tcp() { for _ in $(seq 1 1200); do kill -0 "$2" || break; (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.25; done; echo "nothing on port $1" >&2; return 1; }

PIDS=()
declare -A RAN   # the scenarios run in this call (a noop-as-S replays S's answer of this call only)
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

IDP_PORT=$(free_port)
"$LOADGEN" idp --addr "127.0.0.1:$IDP_PORT" >"$OUT/idp.out" 2>&1 &
PIDS+=($!)
wait_tcp "$IDP_PORT" $!
ISSUER=$(head -1 "$OUT/idp.out")

REDIS_PORT=""
for s in "${SCENARIOS[@]}"; do
  if { [ "$s" = session-store ] || [ "$s" = noop-as-session-store ]; } && [ -z "$REDIS_PORT" ]; then
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
    PIDS+=($!)
    wait_tcp "$REDIS_PORT" $!
  fi
done

for s in "${SCENARIOS[@]}"; do
  grpc=$(free_port); admin=$(free_port)
  drive=$s; log=warn; redis_args=()
  case $s in
    same-jwt-log) drive=same-jwt; log=info ;;
    session-store) redis_args=(--redis "$REDIS_PORT") ;;
  esac
  replay=()
  case $s in
    noop-as-*)
      drive=${s#noop-as-}
      [ "$drive" = session-store ] && redis_args=(--redis "$REDIS_PORT")
      [ -n "${RAN[$drive]:-}" ] || { echo "$s: run $drive before it in this call (its answer is replayed)" >&2; exit 1; }
      replay=(--answer-file "$OUT/$drive.answer.pb") ;;
  esac
  rm -f "$OUT/$s".*
  RAN[$s]=1
  if [ "$s" = noop ] || [ ${#replay[@]} -gt 0 ]; then
    [ "$s" = noop ] && drive=same-jwt
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$s.%p" "$NOOP" noop --addr "127.0.0.1:$grpc" "${replay[@]}" \
      >"$OUT/$s.stdout" 2>"$OUT/$s.stderr" &
    pid=$!
    PIDS+=("$pid")
    wait_tcp "$grpc" "$pid"
  else
    "$LOADGEN" config --issuer "$ISSUER" --grpc "127.0.0.1:$grpc" --admin "127.0.0.1:$admin" \
      "${redis_args[@]}" >"$OUT/$s.toml"
    RUST_LOG=$log valgrind --tool=callgrind --callgrind-out-file="$OUT/$s.%p" "$BIN" serve --config "$OUT/$s.toml" \
      >"$OUT/$s.stdout" 2>"$OUT/$s.stderr" &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$admin/readyz" "$pid"
  fi
  "$LOADGEN" count --addr "127.0.0.1:$grpc" --issuer "$ISSUER" --scenario "$drive" --n "$N" \
    --callgrind-pid "$pid" --warmup "$W" "${redis_args[@]}" --save-answer "$OUT/$s.answer.pb" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$OUT/$s.$pid.1")
  echo "$s $((total / N))"
done
