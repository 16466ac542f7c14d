#!/usr/bin/env bash
# Re-resolves the pinned dependency sets (needs network; run after editing pyproject.toml
# or services/inference/requirements.in, then commit the results):
#   requirements.lock                       everything, for development, tests and the demo
#   services/inference/requirements.txt     the inference image's subset, same versions
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
UV=.venv/bin/uv
$UV pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock -q
$UV pip compile services/inference/requirements.in -c requirements.lock --python-version 3.11 \
  --no-header --no-annotate -o services/inference/requirements.txt -q
echo "locked: requirements.lock, services/inference/requirements.txt"
