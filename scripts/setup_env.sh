#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the pinned runtime dependencies and this
# package; with --test, also the test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
requirements=requirements.txt
if [ "${1:-}" = "--test" ]; then
  requirements=requirements-test.txt
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements" -e .
