#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs exactly what requirements.lock pins, then the
# project itself in editable mode. Idempotent: a second run only checks. Called by the
# Makefile's demo and test targets; nothing has to be installed by hand before it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
UV_VERSION="0.13.8"
VENV=".venv"

# Container tooling from Debian's packages: podman, with runc as its runtime, and debootstrap
# for the images; containerd (CRI), iptables and iproute2 for the one-node cluster. Installed
# only when missing (bookworm: podman 4.3, runc 1.1, containerd 1.6); installing needs root,
# as CI and these machines run.
missing=()
for tool in podman runc debootstrap containerd iptables ip nsenter openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    case "$tool" in
      ip) missing+=(iproute2) ;;
      nsenter) missing+=(util-linux) ;;
      *) missing+=("$tool") ;;
    esac
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: modelrail's images need ${missing[*]} (Debian packages); install them as root" >&2
    exit 2
  fi
  echo "bootstrap: installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

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
