#!/usr/bin/env bash
# The serving benchmark on trained models (benchmarks/serving.py): fairseq dense, --sparse-inference and
# CTranslate2 float32 and int8, 1 and 2 threads, batch 1 and 64, natural and fixed lengths, BLEU of each, on
# the base-size MP 90 % model (13_base_model.sh, in BASE_WORK) and the demo-size SLT 90 % (WORK/slt/slt_0.9),
# into OUT with the command, date, CPU and the base model's updates above the table. Measure with nothing else
# running (pause other training with kill -STOP, kill -CONT after); 21-23 min with the default SERVING_ARGS on a
# 2-core AMD EPYC (measured: 1236 and 1346 s).
# Skipped when OUT exists (delete it to measure again); with COMMIT_REPO set, OUT is committed there.
#   WORK=runs/multi30k bash examples/multi30k/14_serving_benchmark.sh
RECIPE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" && ROOT_DIR="$(cd "$RECIPE/../.." && pwd)"
: "${WORK:=$ROOT_DIR/runs/multi30k}" && : "${BASE_WORK:=${WORK}_base}"
: "${OUT:=${COMMIT_REPO:-$ROOT_DIR}/docs/benchmarks/serving_trained_base.txt}"
: "${SERVING_ARGS:=--sentences 128 --sentences-batch1 20 --repeats 3}"
base="$BASE_WORK/mp/mp_0.9" demo="$WORK/slt/slt_0.9"
[ -e "$OUT" ] && { echo "serving benchmark: $OUT exists (delete it to measure again)"; exit 0; }
for run in "$base" "$demo"; do  # both trained to the end, or nothing is measured or written
  [ -e "$run/.done" ] && [ -f "$run/checkpoint_best.pt" ] || {
    echo "error: no finished run in $run (13_base_model.sh for the base-size model; 06_iterate.sh slt up to 0.9" \
      "for the demo-size one)" >&2; exit 1; }
done
source "$RECIPE/common.sh"
echo "serving benchmark (about 25 min) into $OUT"
command=(python3 "$ROOT_DIR/benchmarks/serving.py" "$base/checkpoint_best.pt" "$demo/checkpoint_best.pt"
  --labels base-MP demo-SLT --data "$WORK/data/data-bin" --references "$WORK/data/text/test.$TGT")
# shellcheck disable=SC2206
command+=($SERVING_ARGS)
mkdir -p "$(dirname "$OUT")"
{
  echo "# ${command[*]}" | sed "s#$ROOT_DIR/##; s#$BASE_WORK#\${BASE_WORK}#g; s#$WORK#\${WORK}#g"
  echo "# $(date -u +%F), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc --all) cores, nothing else running" \
    "(examples/multi30k/14_serving_benchmark.sh); base: 13_base_model.sh (MP 90 %," \
    "$(sed -n 's/^MAX_UPDATE=//p' "$base/recipe-settings.txt") updates)"
  "${command[@]}"
} > "$OUT.part" 2>&1 || { tail -n 3 "$OUT.part"; rm -f "$OUT.part"; exit 1; }
mv "$OUT.part" "$OUT"
[ -z "${COMMIT_REPO:-}" ] || { git -C "$COMMIT_REPO" add -- "$OUT" &&
  git -C "$COMMIT_REPO" commit -q -m "docs/benchmarks: serving, trained base-size and demo-size models at 90 %" -- "$OUT"; }
