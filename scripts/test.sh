#!/usr/bin/env bash
# The test command: sets everything up (idempotent), then runs ruff and the whole test suite,
# end-to-end tests against a real Label Studio included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-label-studio
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
