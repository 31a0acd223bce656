#!/usr/bin/env bash
# Runs the test suite (sets up the virtualenv first when needed). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh")"
cd "$root"
# TEST_WORKERS processes (pytest-xdist; default: one per core, at most 4; 1: in this process). worksteal: a worker
# that runs out takes tests queued for another (each file at one worker, loadfile, left one waiting 40 s at the end)
workers="${TEST_WORKERS:-$(python3 -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}"
parallel=() threads=2
[ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist worksteal) threads=1  # the cores are the workers'
OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}" exec "$venv/bin/python" -m pytest -q "${parallel[@]}" -W ignore::UserWarning \
  -W ignore::FutureWarning -W ignore::DeprecationWarning tests "$@"
