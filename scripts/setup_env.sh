#!/usr/bin/env bash
# Creates (once) the virtualenv and installs fairseq-slt with its dependencies; prints the venv path.
# Settings: SLT_VENV (default .venv in the repo), TORCH_SPEC (default torch==2.13.0, the CPU build;
# install the torch build of your choice into the venv first and it is kept).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SLT_VENV:-$root/.venv}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
stamp="$venv/.fairseq-slt-installed"
want="$(cat "$root/setup.py" "$root/scripts/setup_env.sh" | sha256sum | cut -c1-16)"

# one setup at a time: two commands started at once in a fresh clone (the tests and the demo) wait here
# for the first to finish instead of building one venv twice ("No module named pip")
mkdir -p "$venv" && exec 9> "$venv/.setup.lock" && { ! command -v flock > /dev/null || flock 9; }
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
py="$venv/bin/python"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$py" -m pip install -q --upgrade pip setuptools wheel >&2
  # torch first and pinned: fairseq's build must not pull the newest (CUDA) torch
  "$py" -c "import torch" 2>/dev/null || "$py" -m pip install -q "$torch_spec" >&2
  "$py" -m pip install -q numpy cython >&2
  # fairseq-fixed compiles extensions against the installed torch: no build isolation; sentencepiece pinned:
  # another release may pick another vocabulary, and the committed runs' (dictionaries 9435ec3c11fee991) is 0.2.3's
  "$py" -m pip install -q --no-build-isolation "fairseq-fixed==0.12.3.1" sacrebleu "sentencepiece==0.2.3" pytest pytest-xdist matplotlib tensorboard tensorboardX \
    "ctranslate2>=4.0" >&2  # the optional extra 'ct2' (fairseq-slt export-ct2), tested with the rest
  "$py" -m pip install -q --no-build-isolation --no-deps -e "$root" >&2
  "$venv/bin/fairseq-slt" link-user-dir >&2
  echo "$want" > "$stamp"
fi
echo "$venv"
