#!/usr/bin/env bash
# The test command: set up .venv if needed, check lint, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --with-extras
.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m ruff format --check src tests bench
.venv/bin/python -m pytest "$@"
