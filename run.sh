#!/usr/bin/env bash
# Run the whole pipeline, Kaldi-style, in one process:
#   bash run.sh [--config FILE] [--stage N|NAME] [--stop-stage M|NAME] [--force] [--demo] [key=value ...]
#   stages: 0 prepare, 1 folds, 2 train, 3 embed, 4 score, 5 stack, 6 submit, 7 report,
#           8 export (the bundle that python -m src serve loads)
# Without --config: configs/demo.yaml when input/ is empty (it generates the demo data there) or
# holds the demo data; configs/zalo.yaml (GPU) or configs/zalo_cpu.yaml for real data. A data
# folder named by paths.input=... or a config needs its data (or --demo). Finished stages are
# skipped when their inputs and config are unchanged; --force redoes them. Overrides that change results get their
# own run folder (see README, "Runs and the leaderboard"). Per stage: python -m src STAGE --help;
# every config key: python -m src show-config --explain (configs/REFERENCE.md).
set -euo pipefail
cd "$(dirname "$0")"
for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0; fi
done
bash scripts/setup_env.sh
exec .venv/bin/python -m src run "$@"
