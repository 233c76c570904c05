#!/usr/bin/env bash
# The test command of the README and of CI: test dependencies into .venv,
# then the whole suite (8 host CPU devices, set by tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
exec .venv/bin/python -m pytest "$@"
