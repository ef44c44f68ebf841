#!/bin/sh
# The demo: one PuLID-Flux image through a real ComfyUI server (see scripts/demo.py).
#   scripts/demo.sh                 tiny random-weight models (no downloads), CPU
#   scripts/demo.sh --models DIR    real weights from a ComfyUI models folder (README table)
exec python3 "$(dirname "$0")/dev.py" demo "$@"
