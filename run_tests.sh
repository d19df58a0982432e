#!/usr/bin/env bash
# The test suite: installs what it needs (see scripts/bootstrap.sh), checks lint and format (ruff), then runs pytest in
# PATTLITE_TEST_WORKERS processes (default 2, pytest-xdist; one test file per process at a time, so each
# file's shared fixtures are built once). Extra arguments go to pytest, e.g. ./run_tests.sh -k model -x;
# -n 0 runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")"
python="$(scripts/bootstrap.sh | tail -n 1)"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
workers=(-n "${PATTLITE_TEST_WORKERS:-2}" --dist loadfile)
if ! "$python" -c "import xdist" >/dev/null 2>&1; then
  echo "[run_tests] pytest-xdist is not installed in this environment: running in one process" >&2
  workers=()
fi
# Lint and format first (ruff, configured in pyproject.toml): seconds, and a failure names file and line.
if ! "$python" -m ruff --version >/dev/null 2>&1; then
  echo "[run_tests] ERROR: ruff is not installed in $python's environment: pip install -e '.[dev]'" >&2
  exit 1
fi
echo "[run_tests] $python -m ruff check && $python -m ruff format --check" >&2
"$python" -m ruff check pattlite tests scripts
"$python" -m ruff format --check pattlite tests scripts
echo "[run_tests] $python -m pytest ${workers[*]+${workers[*]}} $*" >&2
exec "$python" -m pytest ${workers[@]+"${workers[@]}"} "$@"
