#!/usr/bin/env bash
# Every GPU figure of issue 26 in one go, under 8 minutes on one H200-class GPU:
#   1. the CUDA-only tests (resume after a kill exact on CUDA, fixed-batch numerical safety,
#      inductor-compiled loss), about 1-2 minutes;
#   2. bench/gpu_check.py: the zalo recipe on libri-zalo, every fast default on and off side by
#      side (10 variants x 20 s, plus warm-ups and one compile), TFLOP/s and share of the bf16
#      peak, GPU-busy and data-wait shares, peak memory, embedding speed (fp32/bf16, small/large
#      batches), about 5-6 minutes.
# Writes outputs/gpu_session/{tests.txt,gpu_check.json,table.md}; prints the table.
#   bash bench/gpu_session.sh [--data DIR] [--seconds 20] [key=value ...]
# PYTHON=python3 uses that interpreter (a machine whose python3 already holds requirements.txt)
# instead of setting up .venv. Without libri-zalo at --data (default ../shared/data/libri-zalo,
# then shared/data/libri-zalo), it generates a synthetic set of the same shape (163 training
# speakers) and says so in the JSON: speed figures barely depend on what the audio says.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  bash scripts/setup_env.sh
  PYTHON=.venv/bin/python
fi
out=outputs/gpu_session
mkdir -p "$out"
data=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
for candidate in "$data" ../shared/data/libri-zalo shared/data/libri-zalo; do
  if [[ -n "$candidate" && -f "$candidate/public-test.csv" ]]; then data="$candidate"; break; fi
done
if [[ -z "$data" || ! -f "$data/public-test.csv" ]]; then
  data="$out/synthetic-data"
  echo "gpu_session: no libri-zalo here; generating a synthetic set of its shape in $data" >&2
  [[ -f "$data/public-test.csv" ]] || "$PYTHON" -c "
from src.data.demo import generate_demo
generate_demo('$data', n_speakers=163, clips_per_speaker=6, n_test_speakers=40,
              test_clips_per_speaker=6, seed=0, workers=8)"
fi
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
RUN_INDUCTOR=1 timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu_speed.py \
  > "$out/tests.txt" 2>&1 || echo "gpu_session: tests failed or timed out (see $out/tests.txt)" >&2
tail -3 "$out/tests.txt"
timeout $((470 - (SECONDS - start))) "$PYTHON" bench/gpu_check.py --data "$data" \
  --out outputs/gpu_check --seconds 20 --json "$out/gpu_check.json" "${args[@]}"
"$PYTHON" -c "import json; print(json.load(open('$out/gpu_check.json'))['table'])" > "$out/table.md"
echo "gpu_session: $((SECONDS - start)) s; data $data; figures in $out/" >&2
