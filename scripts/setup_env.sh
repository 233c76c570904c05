#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the pinned runtime dependencies and this
# package; with --test, also the test dependencies. Safe to run again.
# --aot (and --test, whose tests/test_aot_compile.py needs it) also installs
# the pinned libtpu of requirements-aot.txt into .libtpu/, outside .venv,
# for scripts/aot_compile.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
requirements=requirements.txt
libtpu=no
case "${1:-}" in
  --test) requirements=requirements-test.txt; libtpu=yes ;;
  --aot) libtpu=yes ;;
esac
.venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements" -e .
if [ "$libtpu" = yes ]; then
  version=$(sed -n 's/^libtpu==\([^ ]*\).*/\1/p' requirements-aot.txt)
  if [ ! -d ".libtpu/libtpu-${version}.dist-info" ]; then
    rm -rf .libtpu
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps \
      --target .libtpu -r requirements-aot.txt
  fi
fi
