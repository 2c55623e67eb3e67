#!/usr/bin/env bash
# One short GPU check (under 8 minutes): the zalo recipe trained on libri-zalo for 90 s with AMP
# and 90 s in fp32, then embedding speed; prints samples/s, peak GPU memory, GPU utilisation,
# the share of time spent waiting for batches, AMP vs fp32 and embedding throughput.
#   bash bench/gpu_check.sh [--data DIR] [--seconds 90] [key=value ...]
# Writes outputs/gpu_check.json. Runs on CPU too (no CUDA figures) when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec timeout 480 .venv/bin/python bench/gpu_check.py --json outputs/gpu_check.json "$@"
