#!/usr/bin/env bash
# The test command: a venv per ComfyUI version (0.3.64 and 0.33.0), ruff, then pytest against each.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k golden
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/dev.py test -- "$@"
