#!/usr/bin/env bash
# Settings of the WMT14 recipe (GPUs). Every one can be overridden from the environment.
# DRY_RUN=1 prints every command instead of running it (nothing is downloaded, written or trained).
set -euo pipefail
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$RECIPE_DIR/../.." && pwd)"

: "${PAIR:=en-de}"                                  # en-de or en-fr (Table 1 / Table 2 of the paper)
SRC=${PAIR%-*} TGT=${PAIR#*-}
: "${WORK:=$ROOT/runs/wmt14-$PAIR}"
: "${DRY_RUN:=0}"
: "${VOCAB_SIZE:=32000}"                            # one shared SentencePiece model (the paper: 33k word pieces)
: "${NGPU:=1}"                                       # GPUs of this machine; the batch stays ~32k tokens
: "${MAX_UPDATE:=100000}"                            # fairseq transformer-base (the paper: 500k t2t steps)
: "${REWIND_K:=$(( MAX_UPDATE / 20 ))}"              # theta_k at 5 % of training, as in the paper
: "${MP_START:=0}" "${MP_END:=$(( MAX_UPDATE * 4 / 5 ))}" "${MP_FREQ:=$(( MAX_UPDATE / 50 ))}"  # 400k/500k, every 10k
: "${LEVELS:=0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.85 0.9 0.95 0.98}"  # the paper's levels
: "${INTERMEDIATE:=0.6}"                             # s_i of SLT-MP (via 50 %) and MP-SLT
: "${BEAM:=4}"
: "${USER_DIR:=$ROOT/fairseq_slt}"
: "${ARCH_ARGS:=--arch transformer_wmt_en_de --share-all-embeddings --dropout 0.1}"
: "${TRAIN_ARGS:=--optimizer adam --adam-betas (0.9,0.98) --clip-norm 0.0 --lr 0.0007 --lr-scheduler inverse_sqrt --warmup-updates 4000 --weight-decay 0.0 --label-smoothing 0.1 --max-tokens 4096 --update-freq $(( 8 / NGPU > 0 ? 8 / NGPU : 1 )) --fp16 --no-epoch-checkpoints --save-interval-updates 5000 --keep-interval-updates 1 --log-interval 100 --log-format simple --seed 1}"

DATA="$WORK/data/data-bin"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

# run COMMAND...: runs it, or prints it (shell-quoted, one line) with DRY_RUN=1
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'; echo
  else
    "$@"
  fi
}

# run_to FILE COMMAND...: runs it with its output in FILE (written atomically), or prints "COMMAND > FILE"
run_to() {
  local out="$1"; shift
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"; printf '> %q\n' "$out"
  elif [ ! -s "$out" ]; then
    "$@" > "$out.part" && mv "$out.part" "$out"
  fi
}

# train_stage NAME ARGS...: one fairseq-train run in $WORK/NAME, skipped when done
train_stage() {
  local name="$1" run_dir="$WORK/$1"; shift
  if [ "$DRY_RUN" != 1 ] && [ -e "$run_dir/.done" ]; then echo "$name: done"; return 0; fi
  # shellcheck disable=SC2086
  run fairseq-train "$DATA" --user-dir "$USER_DIR" --task translation_slt \
    --criterion label_smoothed_cross_entropy_slt $ARCH_ARGS $TRAIN_ARGS --max-update "$MAX_UPDATE" \
    --save-dir "$run_dir" "$@"
  [ "$DRY_RUN" = 1 ] || touch "$run_dir/.done"
}

mp_schedule() { echo --prune-start "$MP_START" --prune-end "$MP_END" --prune-frequency "$MP_FREQ"; }
above() { for level in $LEVELS; do python3 -c "import sys; sys.exit(not $level > $1)" && echo "$level"; done; }
