#!/usr/bin/env bash
# Create .venv and install requirements.txt into it; a no-op when they are already installed.
# Used by run.sh and tests/run_tests.sh, so both work on a fresh machine.
# --with-extras also installs the optional extras (requirements-*.txt), e.g. Resemblyzer.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
files=(requirements.txt)
[[ "${1:-}" == "--with-extras" ]] && files+=(requirements-*.txt)
want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp ]] && grep -qx "$want" "$stamp"; then
  exit 0
fi
echo "setup_env: installing requirements into .venv (first run takes a few minutes)" >&2
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >&2 || true
for f in "${files[@]}"; do .venv/bin/python -m pip install --quiet -r "$f" >&2; done
echo "$want" >> "$stamp"
