#!/usr/bin/env bash
# The demo: sets up like the tests, starts ComfyUI with this pack, queues the basic workflow on a
# public-domain face, saves the image and prints its path.  scripts/demo.sh [--models DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/dev.py demo "$@"
