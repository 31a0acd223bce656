#!/usr/bin/env bash
# Settings shared by the Multi30k recipe. Every one can be overridden from the environment,
# e.g. MAX_UPDATE=3000 SPARSITY=0.9 bash examples/multi30k/run_demo.sh
set -euo pipefail
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$RECIPE_DIR/../.." && pwd)"

: "${MULTI30K_DIR:=$ROOT/../shared/data/multi30k}"  # local <split>.<lang>.gz; otherwise downloaded
: "${WORK:=$ROOT/runs/multi30k}"                     # data and runs go here
: "${SRC:=en}" "${TGT:=de}" "${VOCAB_SIZE:=4000}"
: "${PREPARE_ARGS:=}"                                 # e.g. --train-lines 2000 --eval-lines 100 (a small slice)
: "${MAX_UPDATE:=1000}"                               # updates per training run
: "${REWIND_K:=$(( MAX_UPDATE / 20 ))}"               # theta_k: about 5 % of training, as in the paper
: "${SPARSITY:=0.8}"
: "${LEVELS:=0.5 0.8 0.9 0.95}"                       # the table's sparsities (run_table.sh)
: "${MP_START:=0}" "${MP_END:=$(( MAX_UPDATE * 4 / 5 ))}" "${MP_FREQ:=$(( MAX_UPDATE / 50 ))}"  # the paper's, scaled
: "${INTERMEDIATE:=0.5}"                              # s_i of SLT-MP and MP-SLT
: "${THREADS:=2}"
: "${BEAM:=5}"
: "${USER_DIR:=$ROOT/fairseq_slt}"
: "${TRAIN_COMMAND:=fairseq-train}" "${GENERATE_COMMAND:=fairseq-generate}"  # e.g. a cluster wrapper
: "${ARCH_ARGS:=--arch transformer --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings --dropout 0.1}"
: "${TRAIN_ARGS:=--optimizer adam --adam-betas (0.9,0.98) --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 200 --weight-decay 0.0001 --label-smoothing 0.1 --max-tokens 4096 --num-workers 0 --no-epoch-checkpoints --no-progress-bar --log-interval 50 --log-format simple --seed 1}"
: "${DEVICE:=cpu}"  # cpu, or cuda: a CUDA build of torch in the venv first (README), then fp16 training on the GPU
case "$DEVICE" in
  cpu) DEVICE_ARGS="--cpu" ;;
  cuda) DEVICE_ARGS="--fp16" ;;
  *) echo "error: DEVICE must be cpu or cuda, got $DEVICE" >&2; exit 1 ;;
esac
GENERATE_DEVICE_ARGS=$([ "$DEVICE" = cpu ] && echo --cpu || true)

DATA="$WORK/data/data-bin"
mkdir -p "$WORK"
if [ -z "${SLT_NO_SETUP:-}" ]; then  # set SLT_NO_SETUP=1 to use the fairseq already on PATH
  VENV="$("$ROOT/scripts/setup_env.sh")"
  export PATH="$VENV/bin:$PATH"
fi
export OMP_NUM_THREADS="$THREADS" PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}" PYTHONUNBUFFERED=1  # live logs through tee

# fairseq-train with the plugin; the caller adds the run's own options
slt_train() {
  # shellcheck disable=SC2086
  # shellcheck disable=SC2086
  $TRAIN_COMMAND "$DATA" --user-dir "$USER_DIR" --task translation_slt \
    --criterion label_smoothed_cross_entropy_slt $ARCH_ARGS $TRAIN_ARGS $DEVICE_ARGS --max-update "$MAX_UPDATE" "$@"
}

# a stage runs once: it is skipped when its marker exists
done_marker() { echo "$1/.done"; }

# What a stage's results depend on. A stage folder records them when it starts; a rerun with other
# settings stops with one line instead of reusing (or continuing) what was made otherwise.
SETTINGS=$(printf '%s\n' "SRC=$SRC" "TGT=$TGT" "VOCAB_SIZE=$VOCAB_SIZE" "PREPARE_ARGS=$PREPARE_ARGS" \
  "MAX_UPDATE=$MAX_UPDATE" "REWIND_K=$REWIND_K" "ARCH_ARGS=$ARCH_ARGS" "TRAIN_ARGS=$TRAIN_ARGS" "DEVICE=$DEVICE")
claim_stage() {  # DIR [SETTINGS]
  local dir="$1" want="${2:-$SETTINGS}" file="$1/recipe-settings.txt"
  mkdir -p "$dir"
  if [ -f "$file" ]; then
    if [ "$(cat "$file")" != "$want" ]; then
      echo "error: $dir was made with other settings ($(diff <(cat "$file") <(echo "$want") | grep '^[<>]' \
        | sed 's/^< \(.*\)/\1 there/; s/^> \(.*\)/\1 here/' | paste -sd ';' - | sed 's/;/; /g')): use another WORK" >&2
      exit 1
    fi
  else
    echo "$want" > "$file.$$.part" && mv "$file.$$.part" "$file"  # two lanes may claim one folder at once
  fi
}

# train_stage NAME ARGS...: one fairseq-train run in $WORK/NAME (log beside it), skipped when done
train_stage() {
  local name="$1" run="$WORK/$1"; shift
  claim_stage "$run" "$(printf '%s\n' "$SETTINGS" "RUN_ARGS=$*")"
  [ -e "$(done_marker "$run")" ] && { echo "$name: done"; return 0; }
  echo "$name: training ($MAX_UPDATE updates; log: $run.log)"
  slt_train --save-dir "$run" "$@" >> "$run.log" 2>&1 &
  local pid=$!
  show_progress "$name" "$run.log" "$pid"
  wait "$pid" || { tail -n 3 "$run.log"; echo "$name failed: see $run.log"; return 1; }
  touch "$(done_marker "$run")"
}

# show_progress NAME LOG PID: every $PROGRESS_EVERY s while PID runs, the update reached of MAX_UPDATE,
# the last validation loss and an ETA from the rate so far
show_progress() {
  local name="$1" log="$2" pid="$3" start first="" now reached loss eta waited=0
  start=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$(( waited + 1 ))
    [ $(( waited % ${PROGRESS_EVERY:-30} )) = 0 ] && kill -0 "$pid" 2>/dev/null || continue
    reached=$(grep -oE "num_updates[= ][0-9]+" "$log" 2>/dev/null | tail -n 1 | grep -oE "[0-9]+$" || true)
    [ -n "$reached" ] || continue
    [ -n "$first" ] || first=$reached
    loss=$(grep -oE "valid on 'valid' subset \| loss [0-9.]+" "$log" | tail -n 1 | grep -oE "[0-9.]+$" || true)
    now=$(date +%s) eta="?"
    if [ "$reached" -gt "$first" ]; then
      eta=$(( (now - start) * (MAX_UPDATE - reached) / (reached - first) ))
      eta="$(( eta / 60 ))m$(printf %02d $(( eta % 60 )))s"
    fi
    echo "  $name: update $reached/$MAX_UPDATE${loss:+, valid loss $loss}, ETA $eta"
  done
}

mp_schedule() { echo --prune-start "$MP_START" --prune-end "$MP_END" --prune-frequency "$MP_FREQ"; }

claim_stage "$WORK"  # every stage in WORK depends on the data and the dense run: one set of settings per WORK
