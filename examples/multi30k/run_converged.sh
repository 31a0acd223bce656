#!/usr/bin/env bash
# The converged protocol: every run trains T updates (T from the dense curve, 10_dense_curve.sh), theta_k at
# 5 % of T, MP until 80 % of T every 2 %; levels up to 98 %. Two one-thread chains side by side from the start
# (a: dense, then SLT and its kin; b: dense seed 2, MP and its kin), the claims' cells first; after each
# cell the table, JSON and plot are written to PUBLISH and, with COMMIT_REPO set, committed there (only
# those files and the finished runs packed under runs/), so a lost machine loses only the runs in flight: a
# new one unpacks the packed runs and goes on. Resumable.
#   T=3500 COMMIT_REPO=/path/to/checkout bash examples/multi30k/run_converged.sh
# CHAINS=a (or b) runs one chain only, e.g. to leave the other core to other work.
: "${T:?set T, from the dense curve (fairseq-slt curve prints it)}"
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${WORK:=$ROOT_DIR/runs/multi30k-T$T}" "${PUBLISH:=${COMMIT_REPO:-$ROOT_DIR}/docs/results/converged}"
MAX_UPDATE=$T THREADS=1
export MAX_UPDATE THREADS WORK
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
R="$RECIPE_DIR"

STORE="$PUBLISH/runs"
source "$R/store.sh"

publish() {  # the table of every finished cell, written (and committed) one chain at a time, and its runs packed
  (
    flock 9
    pack_finished || { echo "publish: packing failed"; exit 0; }
    fairseq-slt results "$WORK" --generate-command "$GENERATE_COMMAND" --beam "$BEAM" --remove-bpe sentencepiece \
      --references "$WORK/data/text/test.$TGT" --chrf --table "$PUBLISH/table.md" --plot "$PUBLISH/bleu_vs_sparsity.png" \
      --json "$PUBLISH/results.json" --force > "$WORK/publish.log" 2>&1 || { tail -n 3 "$WORK/publish.log"; exit 0; }
    if [ -n "${COMMIT_REPO:-}" ]; then
      git -C "$COMMIT_REPO" add -- "$PUBLISH" &&
        git -C "$COMMIT_REPO" commit -q -m "docs/results/converged (T=$T): $1" -- "$PUBLISH" || echo "publish: nothing committed"
    fi
  ) 9> "$WORK/.publish.lock"
}

levels_up_to() { echo "$LEVELS_ALL" | tr ' ' '\n' | awk -v top="$1" '$1 <= top' | paste -sd' ' -; }
LEVELS_ALL="0.5 0.8 0.9 0.95 0.98"

chain_a() {  # SLT level by level, SLT-MP from SLT 50 %, the sign control; then CLT and LT
  for level in $LEVELS_ALL; do LEVELS="$(levels_up_to "$level")" bash "$R/06_iterate.sh" slt && publish "SLT $level" || return 1; done
  for level in 0.9 0.95 0.98; do
    LEVELS=$level WHICH=slt-mp bash "$R/08_combined.sh" && publish "SLT-MP $level" || return 1
  done
  LEVELS=0.5 bash "$R/06_iterate.sh" clt && bash "$R/07_controls.sh" && publish "CLT 50 and its sign control" || return 1
  for level in $LEVELS_ALL; do LEVELS="$(levels_up_to "$level")" bash "$R/06_iterate.sh" clt && publish "CLT $level" || return 1; done
  for level in $LEVELS_ALL; do LEVELS="$(levels_up_to "$level")" bash "$R/06_iterate.sh" lt && publish "LT $level" || return 1; done
}

wait_for() {  # MARKER: chain b's one cell that needs chain a's (SLT 50 %) waits for it while chain a runs
  until [ -e "$1" ]; do { [ "$a" != 0 ] && kill -0 "$a" 2>/dev/null; } || { echo "error: chain a ended before $1"; return 1; }; sleep 60; done
}

chain_b() {  # needs no dense run of seed 1, so it starts with it: a second dense seed (the noise), MP at every
  # level, MP-SLT 80/90; then the other combined cells
  train_stage dense_seed2 --prune-method none --seed 2 && publish "dense, seed 2" || return 1
  for level in $LEVELS_ALL; do LEVELS=$level bash "$R/05_train_mp.sh" && publish "MP $level" || return 1; done
  for levels in "0.8" "0.8 0.9"; do
    LEVELS=$levels WHICH=mp-slt bash "$R/08_combined.sh" && publish "MP-SLT ${levels##* }" || return 1
  done
  wait_for "$WORK/slt/slt_0.5/.done" && LEVELS=0.8 WHICH=slt-mp bash "$R/08_combined.sh" && publish "SLT-MP 0.8" || return 1
  for levels in "0.8 0.9 0.95" "0.8 0.9 0.95 0.98"; do
    LEVELS=$levels WHICH=mp-slt bash "$R/08_combined.sh" && publish "MP-SLT ${levels##* }" || return 1
  done
}

bash "$R/01_prepare.sh" > "$WORK/prepare.log" 2>&1 || { tail -n 5 "$WORK/prepare.log"; exit 1; }
restore || { echo "error: restoring the packed runs of $STORE failed"; exit 1; }
case " ${CHAINS:=a b} " in *" a "*) ;; *" b "*) a=0 ;; *) echo "error: CHAINS must name a, b or both, got $CHAINS"; exit 1 ;; esac
[ -n "${a:-}" ] || { ( set -o pipefail; { bash "$R/02_train_dense.sh" && publish "dense" && chain_a; } 2>&1 | sed -u 's/^/[a] /' ) & a=$!; }
case " $CHAINS " in *" b "*) ( set -o pipefail; chain_b 2>&1 | sed -u 's/^/[b] /' ) & b=$! ;; esac
[ "$a" = 0 ] || wait "$a" || failed=a
[ -z "${b:-}" ] || wait "$b" || failed="${failed:+$failed and }b"
[ -z "${failed:-}" ] || { echo "error: chain(s) $failed failed (lines above; rerun to resume)"; exit 1; }
