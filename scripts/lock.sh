#!/usr/bin/env bash
# Re-resolves the pinned dependency sets (needs network; run after editing pyproject.toml
# or services/inference/requirements.in, then commit the results):
#   requirements.lock                       everything, for development, tests and the demo
#   services/<image>/requirements.txt       each image's subset (inference, controller,
#                                           loadtest), same versions
# Every file carries sha256 hashes: the bootstrap and the images' wheelhouses check them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
UV=.venv/bin/uv
$UV pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes \
  -o requirements.lock -q
for image in inference controller loadtest; do
  $UV pip compile "services/$image/requirements.in" -c requirements.lock --python-version 3.11 \
    --generate-hashes --no-header --no-annotate -o "services/$image/requirements.txt" -q
done
echo "locked: requirements.lock, services/{inference,controller,loadtest}/requirements.txt"
