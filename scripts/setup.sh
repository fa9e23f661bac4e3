#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system packages, the project's virtualenv (.venv) and,
# with --with-label-studio, a separate virtualenv (.lsvenv) holding Label Studio for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# pip prints a warning per package for this machine's extra local indexes; keep the log, show it
# only when pip fails.
quiet_pip() {
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" | tail -40; rm -f "$log"; return 1
  fi
  rm -f "$log"
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server (apt)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (apt; the status-page test screenshots it headless)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python requirements into .venv"
  # sam2 is an sdist built against the installed torch (no isolated build env that would
  # download a second torch), without its CUDA extension (unused: video post-processing only).
  quiet_pip .venv/bin/pip install -q --disable-pip-version-check setuptools wheel \
    $(grep -E '^(torch|torchvision)==' requirements.txt)
  SAM2_BUILD_CUDA=0 quiet_pip .venv/bin/pip install -q --disable-pip-version-check \
    --no-build-isolation -r requirements-dev.txt
  .venv/bin/python -c "import torch, timm, segment_anything, sam2, fastapi, rq, label_studio_sdk"
  echo "$want" > "$stamp"
fi

if [ "${1:-}" = "--with-label-studio" ] && [ ! -x .lsvenv/bin/label-studio ]; then
  echo "setup: installing label-studio==1.23.2 into .lsvenv (for the end-to-end tests)"
  "$PYTHON" -m venv .lsvenv
  quiet_pip .lsvenv/bin/pip install -q --disable-pip-version-check label-studio==1.23.2
  test -x .lsvenv/bin/label-studio
fi
