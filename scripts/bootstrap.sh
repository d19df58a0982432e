#!/usr/bin/env bash
# Make sure a Python environment with `pattlite` installed is ready, then print its python path on the
# last line of stdout (messages go to stderr). Used by ./run_all.sh and ./run_tests.sh.
#
#   - An active virtualenv/conda environment that already imports pattlite is used as it is.
#   - Otherwise ./.venv is created (Python 3.10-3.12) and `pip install -e .[dev]` runs there; on a machine
#     where `nvidia-smi` sees a GPU the `gpu` extra (NVIDIA's CUDA wheels for TensorFlow) is added.
#   - The install is redone when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "[bootstrap] $*" >&2; }

if [[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ]] && [[ "${VIRTUAL_ENV:-}" != "$PWD/.venv" ]] \
    && python -c "import pattlite" >/dev/null 2>&1; then
  say "using the active environment ($(command -v python))"
  command -v python
  exit 0
fi

stamp=.venv/.pattlite-install-stamp
want="$(sha1sum pyproject.toml | cut -c1-40)"
if [[ -x .venv/bin/python && -f $stamp && "$(cat $stamp)" == "$want" ]]; then
  say "using ./.venv"
  echo "$PWD/.venv/bin/python"
  exit 0
fi

if [[ ! -x .venv/bin/python ]]; then
  py=""
  for cand in "${PYTHON:-}" python3.12 python3.11 python3.10 python3; do
    [[ -n $cand ]] && command -v "$cand" >/dev/null 2>&1 || continue
    # stderr hidden: a pyenv shim for a version that is not installed prints its own complaint
    if "$cand" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
      py=$cand; break
    fi
  done
  if [[ -z $py ]]; then
    say "ERROR: need Python 3.10, 3.11 or 3.12 (TensorFlow 2.21 supports no other); found none on PATH."
    say "Install one, or set PYTHON=/path/to/python3.x, and run this again."
    exit 1
  fi
  say "creating ./.venv with $($py --version 2>&1)"
  "$py" -m venv .venv
fi

extras="dev"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="dev,gpu"
  say "GPU found (nvidia-smi): adding NVIDIA's CUDA wheels for TensorFlow"
fi
say "installing pattlite[$extras] and its dependencies into ./.venv (TensorFlow is large: a few minutes the first time)"
.venv/bin/python -m pip install --quiet --upgrade pip >&2
.venv/bin/python -m pip install --quiet -e ".[$extras]" >&2
echo "$want" > $stamp
say "environment ready: ./.venv"
echo "$PWD/.venv/bin/python"
