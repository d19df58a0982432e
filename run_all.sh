#!/usr/bin/env bash
# Regenerate everything: installs what it needs (scripts/bootstrap.sh), then runs the notebooks in
# order with papermill. Default profile: demo (synthetic data, CPU-sized); cpu runs the real datasets
# found under data/ on a CPU (trains every experiment first, printing the time left).
#   ./run_all.sh [--profile demo|cpu|paper|ci] [--only LIST] [-p NAME=VALUE ...]
#                [--executor local|ray [--address ADDR] [--gpus-per-trial G] [--cpus-per-trial C]]
# -p values are checked before anything starts; each notebook gets those it declares. A run holds
# <results_dir>/.lock (a second run there is refused). Exit status: 0 done, 1 failed or results folder
# in use, 2 bad arguments, 130 / 143 stopped by Ctrl-C / SIGTERM (recorded in run_record.json with
# where; the same command resumes). exec: the signals reach the Python process itself.
set -euo pipefail
cd "$(dirname "$0")"
python="$(scripts/bootstrap.sh | tail -n 1)"
exec "$python" -m pattlite.pipeline "$@"
