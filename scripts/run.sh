#!/usr/bin/env bash
# The service command: sets up (idempotent), then starts Redis (unless REDIS_URL is set), one
# worker and the API on :9090 (PORT). Configure with the environment (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m backend.run "$@"
