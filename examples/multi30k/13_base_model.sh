#!/usr/bin/env bash
# A transformer-base-size model pruned by MP to 90 %, for the serving benchmark (benchmarks/serving.py):
# fairseq's `transformer` (6+6 layers, 512 dims, 2048 FFN, 8 heads; 46M parameters with the recipe's shared
# 4000-word vocabulary), whose matrices are large enough for sparse kernels to win, unlike the demo's 128 dims.
# In BASE_WORK, beside WORK, on WORK's data (01_prepare.sh first); BASE_T updates, dropout 0.3, pre-norm
# layers and a peak learning rate of 7e-4 after a warm-up over the first quarter, MP from the warm-up's end
# to 80 % of BASE_T. (Post-norm layers at 5e-4 with MP from update 0 stayed at the unigram loss, 8.7, for
# 250 updates of BASE_T=500: measured 2026-12-05, so this model is pre-norm.) BASE_T=500, the default, is 3.3
# epochs, 66 min alone on the 2-core machine of docs/benchmarks with THREADS=2 (measured; about 12 s an update
# on one thread beside another run): a model for speed measurements, where every engine's BLEU is compared on
# it (valid loss 6.55 at the end), not for its own BLEU, and short enough for one session.
#   WORK=runs/multi30k THREADS=2 bash examples/multi30k/13_base_model.sh
RECIPE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${WORK:=$RECIPE/../../runs/multi30k}" "${BASE_T:=500}"
: "${BASE_WORK:=${WORK}_base}" "${BASE_ARCH_ARGS:=--arch transformer --share-all-embeddings --dropout 0.3 --encoder-normalize-before --decoder-normalize-before}"
[ -d "$WORK/data/data-bin" ] ||
  { echo "error: no prepared data in $WORK/data (run 01_prepare.sh with this WORK first)" >&2; exit 1; }
mkdir -p "$BASE_WORK" && ln -sfn "$WORK/data" "$BASE_WORK/data"
WORK="$BASE_WORK" MAX_UPDATE="$BASE_T" ARCH_ARGS="$BASE_ARCH_ARGS"
unset REWIND_K MP_END MP_FREQ  # the schedule scales to BASE_T, whatever the caller's run used
MP_START=$(( BASE_T / 4 ))
# a checkpoint every 100 updates (12-20 minutes), so that a stopped session loses little of the run
TRAIN_ARGS="--optimizer adam --adam-betas (0.9,0.98) --lr 0.0007 --lr-scheduler inverse_sqrt --warmup-updates $(( BASE_T / 4 )) --weight-decay 0.0001 --label-smoothing 0.1 --max-tokens 4096 --num-workers 0 --no-epoch-checkpoints --save-interval-updates 100 --keep-interval-updates 1 --no-progress-bar --log-interval 50 --log-format simple --seed 1"
source "$RECIPE/common.sh"
# shellcheck disable=SC2046
train_stage mp/mp_0.9 --prune-method mp --prune-sparsity 0.9 $(mp_schedule)
