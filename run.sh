#!/usr/bin/env bash
# Run the whole pipeline, Kaldi-style: bash run.sh [--config FILE] [--stage N] [--stop-stage M] [key=value ...]
#   stages: 0 prepare, 1 folds, 2 train, 3 embed, 4 score, 5 stack, 6 submit, 7 report
# With no data in input/ the deterministic demo data set is generated there first.
# Finished stages are skipped when their inputs and config are unchanged; --force redoes them.
set -euo pipefail
cd "$(dirname "$0")"

config=configs/demo.yaml
stage=0
stop_stage=7
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --force) extra+=(--force); shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *=*) extra+=("$1"); shift ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

bash scripts/setup_env.sh
PY=.venv/bin/python

input_dir=$("$PY" -m src show-config --config "$config" "${extra[@]}" | "$PY" -c "import sys, yaml; print(yaml.safe_load(sys.stdin)['paths']['input'])")
if [[ -z "$(ls -A "$input_dir" 2>/dev/null | grep -v '^.gitkeep$' || true)" ]]; then
  echo "run.sh: $input_dir is empty: generating the demo data set there"
  partial="${input_dir%/}.demo-partial"  # generated aside, moved in only when complete
  rm -rf "$partial"
  "$PY" -m src demo --config "$config" --out "$partial" "${extra[@]}"
  mkdir -p "$input_dir"
  mv "$partial"/* "$input_dir"/
  rmdir "$partial"
fi

names=(prepare folds train embed score stack submit report)
for ((i = stage; i <= stop_stage; i++)); do
  echo "run.sh: stage $i: ${names[$i]}"
  "$PY" -m src "${names[$i]}" --config "$config" "${extra[@]}"
done
echo "run.sh: done"
