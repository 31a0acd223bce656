#!/usr/bin/env bash
# The paper's Table 1 at Multi30k scale: dense; MP, SLT, CLT, LT at $LEVELS; the sign control; SLT-MP and
# MP-SLT above $INTERMEDIATE; then the table. Resumable: every finished stage is skipped when rerun.
# 23 runs of $MAX_UPDATE updates (1500 here: ~15 min each with one thread); STREAMS=2 trains two at a time,
# one thread each, which is the fastest way through on 2 cores.
: "${STREAMS:=1}"
case "$STREAMS" in
  1|2) ;;
  *) echo "error: STREAMS must be 1 or 2, got $STREAMS" >&2; exit 1 ;;
esac
: "${MAX_UPDATE:=1500}" "${THREADS:=$(( STREAMS == 2 ? 1 : 2 ))}"
: "${WORK:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/runs/multi30k-table}"
export MAX_UPDATE THREADS WORK
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$(date +%s)
bash "$RECIPE_DIR/01_prepare.sh" > "$WORK/prepare.log" 2>&1 || { tail -n 5 "$WORK/prepare.log"; exit 1; }
bash "$RECIPE_DIR/02_train_dense.sh"
# two chains, each needing only the dense run and its own earlier stages; the claims' runs come first
chain_a() {
  bash "$RECIPE_DIR/06_iterate.sh" slt && bash "$RECIPE_DIR/08_combined.sh" slt-mp &&
    bash "$RECIPE_DIR/06_iterate.sh" clt && bash "$RECIPE_DIR/07_controls.sh"
}
chain_b() {
  bash "$RECIPE_DIR/05_train_mp.sh" && bash "$RECIPE_DIR/08_combined.sh" mp-slt && bash "$RECIPE_DIR/06_iterate.sh" lt
}
if [ "$STREAMS" = 2 ]; then
  ( set -o pipefail; chain_a 2>&1 | sed -u 's/^/[a] /' ) & a=$!
  ( set -o pipefail; chain_b 2>&1 | sed -u 's/^/[b] /' ) & b=$!
  wait "$a" || failed=a
  wait "$b" || failed="${failed:+$failed and }b"
  [ -z "${failed:-}" ] || { echo "error: stream(s) $failed failed (lines above; rerun to resume)"; exit 1; }
else
  chain_a
  chain_b
fi
bash "$RECIPE_DIR/09_results.sh"
echo "wall time: $(( $(date +%s) - start )) s"
