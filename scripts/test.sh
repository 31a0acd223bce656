#!/usr/bin/env bash
# Runs the test suite (sets up the virtualenv first when needed). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh")"
cd "$root"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" exec "$venv/bin/python" -m pytest -q -W ignore::UserWarning -W ignore::FutureWarning -W ignore::DeprecationWarning tests "$@"
