#!/usr/bin/env bash
# The dense learning curve of the converged protocol: dense runs of CURVE_MAX updates, one per seed in
# SEEDS, each keeping a checkpoint every CURVE_EVERY updates and the rewind points theta_0 and every 25
# updates up to 5 % of CURVE_MAX (so theta_k exists for whatever T the curve picks); then
# `fairseq-slt curve` scores every checkpoint (valid and test) and picks T by its rule (holding at two
# consecutive checkpoints: CURVE_CONFIRM, see docs/results/converged/), from each seed and
# from the mean of every finished seed (curve.{md,json,png} in WORK). Run seeds side by side as separate
# calls (SEEDS=1 ... & SEEDS=2 ...). Its own WORK (default runs/multi30k-curve): the protocol at T
# (run_converged.sh) runs in another.
: "${CURVE_MAX:=8000}" "${CURVE_EVERY:=500}" "${CURVE_CONFIRM:=2}" "${SEEDS:=1}" "${THREADS:=1}"
: "${WORK:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/runs/multi30k-curve}"
MAX_UPDATE=$CURVE_MAX
export MAX_UPDATE THREADS WORK
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bash "$RECIPE_DIR/01_prepare.sh" > "$WORK/prepare.log" 2>&1 || { tail -n 5 "$WORK/prepare.log"; exit 1; }
points=$(seq -s, 25 25 $(( CURVE_MAX / 20 )))
for seed in $SEEDS; do
  train_stage "dense_seed$seed" --prune-method none --seed "$seed" --save-rewind-points "0,$points" \
    --save-interval-updates "$CURVE_EVERY" --keep-interval-updates -1
done
curve() {  # OUT RUN...: one curve (scores cached beside each run, so each checkpoint is scored once)
  local out="$1"; shift
  fairseq-slt curve "$@" --every "$CURVE_EVERY" --confirm "$CURVE_CONFIRM" --remove-bpe sentencepiece --references-dir "$WORK/data/text" \
    --tgt "$TGT" --generate-command "$GENERATE_COMMAND" --beam "$BEAM" --json "$out.json" --plot "$out.png" --force \
    > "$out.md.part" && mv "$out.md.part" "$out.md"
}
(
  flock 9  # one scorer at a time: the seeds' calls share the finished runs
  for seed in $SEEDS; do curve "$WORK/dense_seed$seed/curve" "$WORK/dense_seed$seed"; done
  finished=$(for run in "$WORK"/dense_seed*; do [ -e "$run/.done" ] && echo "$run"; done)
  # shellcheck disable=SC2086
  [ "$(echo "$finished" | wc -w)" -gt 1 ] && curve "$WORK/curve" $finished
  cat "$WORK/curve.md" 2>/dev/null || cat "$WORK/dense_seed${SEEDS##* }/curve.md"
) 9> "$WORK/.curve.lock"
