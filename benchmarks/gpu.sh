#!/usr/bin/env bash
# One GPU check, under 8 minutes on one modern GPU: speed and peak memory of ours against the
# reference code's structure, written to one JSON file.
#   benchmarks/gpu.sh [OUT.json]             on a CUDA GPU, full size (SD 1.5 at 512 px, ViT-B/16)
#   benchmarks/gpu.sh --dry-run [OUT.json]   on the CPU at toy size (the tiny zoo): checks the script
# Needs the project's environment (scripts/bootstrap; PYTHON=... to use another interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=gpu
if [ "${1:-}" = "--dry-run" ]; then mode=cpu; shift; fi
out="${1:-runs/gpu.json}"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
mkdir -p "$(dirname "$out")"
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu.py --mode "$mode" --out "$out"
