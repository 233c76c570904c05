#!/usr/bin/env bash
# The test command of the README and of CI: test dependencies into .venv,
# then the whole suite (8 host CPU devices, set by tests/conftest.py) in two
# worker processes, whole files to a worker so module fixtures run once.
# Arguments go to pytest (`-n 0` runs in this one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
