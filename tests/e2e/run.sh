#!/usr/bin/env bash
# End-to-end tests through real Envoy: installs the world (scripts/e2e-setup.sh), then runs pytest.
#   tests/e2e/run.sh                 # everything (oidc-authz binary: $OIDC_AUTHZ_BIN or target/debug/oidc-authz)
#   tests/e2e/run.sh -k public -v    # extra args go to pytest
# Without the binary (or the mock IdP) the tests needing it are skipped, or FAIL when CI=true.
# Exits non-zero when any test fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash scripts/e2e-setup.sh
exec .venv/bin/python -m pytest tests/e2e -q "$@"
