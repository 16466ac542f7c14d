#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs exactly what requirements.lock pins, then the
# project itself in editable mode. Idempotent: a second run only checks. Called by the
# Makefile's demo and test targets; nothing has to be installed by hand before it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
UV_VERSION="0.13.8"
VENV=".venv"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "bootstrap: $PYTHON not found; modelrail needs CPython 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# uv resolves nothing here: it installs the committed lock. It lives in the venv so that
# the machine's own Python is never touched.
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
export VIRTUAL_ENV="$PWD/$VENV"
stamp="$VENV/.lock-installed"
if [ ! -f "$stamp" ] || ! cmp -s requirements.lock "$stamp"; then
  "$VENV/bin/uv" pip sync --quiet --python "$VENV/bin/python" requirements.lock
  "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
  cp requirements.lock "$stamp"
fi
