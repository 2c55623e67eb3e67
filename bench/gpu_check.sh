#!/usr/bin/env bash
# One short GPU check (under 8 minutes): the zalo recipe trained on libri-zalo, 20 s per variant
# (every fast default on and off, compiled, GPU augmentation, batch 256), then embedding speed;
# prints samples/s, TFLOP/s and share of peak, GPU-busy and data-wait shares, peak memory.
#   bash bench/gpu_check.sh [--data DIR] [--seconds 20] [--variants a,b] [key=value ...]
# Writes outputs/gpu_check.json. Runs on CPU too (no CUDA figures) when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec timeout 480 .venv/bin/python bench/gpu_check.py --json outputs/gpu_check.json "$@"
