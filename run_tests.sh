#!/usr/bin/env bash
# The test suite: installs what it needs (see scripts/bootstrap.sh), then runs pytest.
# Extra arguments go to pytest, e.g. ./run_tests.sh -k model -x
set -euo pipefail
cd "$(dirname "$0")"
python="$(scripts/bootstrap.sh | tail -n 1)"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
echo "[run_tests] $python -m pytest $*" >&2
exec "$python" -m pytest "$@"
