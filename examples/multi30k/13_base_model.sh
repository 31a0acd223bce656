#!/usr/bin/env bash
# A transformer-base-size model pruned by MP to 90 %, for the serving benchmark (benchmarks/serving.py):
# fairseq's `transformer` (6+6 layers, 512 dims, 2048 FFN, 8 heads; 46M parameters with the recipe's shared
# 4000-word vocabulary), whose matrices are large enough for sparse kernels to win, unlike the demo's 128 dims.
# In BASE_WORK, beside WORK, on WORK's data (01_prepare.sh first); BASE_T updates with the MP schedule scaled
# to them, dropout 0.3 and a peak learning rate of 5e-4 (the recipe's 2e-3 is for 128 dims; post-norm 512 dims
# needs less), warm-up over the first quarter. About 12 s an update on one thread of the 2-core machine of
# docs/benchmarks beside another run (measured): 7 h at BASE_T=2000.
#   WORK=runs/multi30k BASE_T=2000 bash examples/multi30k/13_base_model.sh
RECIPE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${WORK:=$RECIPE/../../runs/multi30k}" "${BASE_T:=2000}"
: "${BASE_WORK:=${WORK}_base}" "${BASE_ARCH_ARGS:=--arch transformer --share-all-embeddings --dropout 0.3}"
[ -d "$WORK/data/data-bin" ] ||
  { echo "error: no prepared data in $WORK/data (run 01_prepare.sh with this WORK first)" >&2; exit 1; }
mkdir -p "$BASE_WORK" && ln -sfn "$WORK/data" "$BASE_WORK/data"
WORK="$BASE_WORK" MAX_UPDATE="$BASE_T" ARCH_ARGS="$BASE_ARCH_ARGS"
unset REWIND_K MP_START MP_END MP_FREQ  # the schedule scales to BASE_T, whatever the caller's run used
# a checkpoint every 100 updates (15 minutes), so that a stopped session loses little of a 7 h run
TRAIN_ARGS="--optimizer adam --adam-betas (0.9,0.98) --lr 0.0005 --lr-scheduler inverse_sqrt --warmup-updates $(( BASE_T / 4 )) --weight-decay 0.0001 --label-smoothing 0.1 --max-tokens 4096 --num-workers 0 --no-epoch-checkpoints --save-interval-updates 100 --keep-interval-updates 1 --no-progress-bar --log-interval 50 --log-format simple --seed 1"
source "$RECIPE/common.sh"
# shellcheck disable=SC2046
train_stage mp/mp_0.9 --prune-method mp --prune-sparsity 0.9 $(mp_schedule)
