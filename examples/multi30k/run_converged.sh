#!/usr/bin/env bash
# The converged protocol: every run trains T updates (T from the dense curve, 10_dense_curve.sh), theta_k at
# 5 % of T, MP until 80 % of T every 2 %; levels up to 98 %. Two one-thread chains side by side from the start
# (a: dense, then SLT and its kin; b: dense seed 2, MP and its kin), the claims' cells first; after each
# cell the table, JSON and plot are written to PUBLISH and, with COMMIT_REPO set, committed there (only
# those files and the finished runs packed under runs/), so a lost machine loses only the runs in flight: a
# new one unpacks the packed runs and goes on. Resumable.
# Two phases on the two lanes: the claims' cells; then the second seeds that `fairseq-slt results` picks
# from them (the recipe with --seed 2 in ${WORK}_seed2), a re-run of one row from its recorded command
# (RERUN), the transformer-base-size MP 90 % model of the serving benchmark (13_base_model.sh, in ${WORK}_base;
# skipped once that benchmark is committed) and the remaining cells. Last, alone on the machine, the serving
# benchmark on the base-size and demo-size models (14_serving_benchmark.sh: docs/benchmarks/serving_trained_base.txt).
#   T=3500 COMMIT_REPO=/path/to/checkout bash examples/multi30k/run_converged.sh
# CHAINS=a (or b) runs one chain only, e.g. to leave the other core to other work.
: "${T:?set T, from the dense curve (fairseq-slt curve prints it)}"
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${WORK:=$ROOT_DIR/runs/multi30k-T$T}" "${PUBLISH:=${COMMIT_REPO:-$ROOT_DIR}/docs/results/converged}"
MAX_UPDATE=$T THREADS=1
export MAX_UPDATE THREADS WORK
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
R="$RECIPE_DIR"

: "${RERUN:=clt/clt_0.5}"  # the row re-run from its command: a cell the second seeds always cover (the sign control)
STORE="$PUBLISH/runs" SEED2_WORK="${WORK}_seed2" SEED2_STORE="$PUBLISH/runs_seed2"
BASE_WORK="${WORK}_base"
: "${BENCHMARKS:=${COMMIT_REPO:-$ROOT_DIR}/docs/benchmarks}"
SERVING_OUT="$BENCHMARKS/serving_trained_base.txt"  # 14_serving_benchmark.sh writes it once
source "$R/store.sh"

publish() {  # the table of every finished cell, written (and committed) one chain at a time, and its runs packed
  # once scored, so that each archive carries its scores (scores.json: a restored run is not scored again)
  (
    flock 9
    scored=yes
    # shellcheck disable=SC2046
    fairseq-slt results "$WORK" $([ ! -d "$SEED2_WORK" ] || echo "$SEED2_WORK") --generate-command "$GENERATE_COMMAND" --beam "$BEAM" --remove-bpe sentencepiece \
      --references "$WORK/data/text/test.$TGT" --chrf --table "$PUBLISH/table.md" --plot "$PUBLISH/bleu_vs_sparsity.png" \
      --json "$PUBLISH/results.json" --force > "$WORK/publish.log" 2>&1 || { tail -n 3 "$WORK/publish.log"; scored=no; }
    pack_finished && { [ ! -d "$SEED2_WORK" ] || ( WORK="$SEED2_WORK" STORE="$SEED2_STORE" pack_finished ); } ||
      { echo "publish: packing failed"; exit 0; }
    [ "$scored" = yes ] || exit 0
    if [ -n "${COMMIT_REPO:-}" ]; then
      # the message says what the table gained (the stage that called publish, $1, may have finished long before)
      change=$(git -C "$COMMIT_REPO" show "HEAD:$(realpath --relative-to="$COMMIT_REPO" "$PUBLISH")/results.json" 2>/dev/null |
        python3 "$R/results_change.py" - "$PUBLISH/results.json") || change="after $1"
      git -C "$COMMIT_REPO" add -- "$PUBLISH" &&
        git -C "$COMMIT_REPO" commit -q -m "docs/results/converged (T=$T): $change" -- "$PUBLISH" || echo "publish: nothing committed"
    fi
  ) 9> "$WORK/.publish.lock"
}

levels_up_to() { echo "$LEVELS_ALL" | tr ' ' '\n' | awk -v top="$1" '$1 <= top' | paste -sd' ' -; }
LEVELS_ALL="0.5 0.8 0.9 0.95 0.98"

claims_a() {  # dense, SLT level by level, SLT-MP from SLT 50 %, CLT 50 % and its sign control
  bash "$R/02_train_dense.sh" && publish "dense" || return 1
  for level in $LEVELS_ALL; do LEVELS="$(levels_up_to "$level")" bash "$R/06_iterate.sh" slt && publish "SLT $level" || return 1; done
  for level in 0.9 0.95 0.98; do
    LEVELS=$level WHICH=slt-mp bash "$R/08_combined.sh" && publish "SLT-MP $level" || return 1
  done
  LEVELS=0.5 bash "$R/06_iterate.sh" clt && bash "$R/07_controls.sh" && publish "CLT 50 and its sign control"
}

claims_b() {  # needs no dense run of seed 1: a second dense seed (the noise), MP at every level, MP-SLT 80/90
  train_stage dense_seed2 --prune-method none --seed 2 && publish "dense, seed 2" || return 1
  for level in $LEVELS_ALL; do LEVELS=$level bash "$R/05_train_mp.sh" && publish "MP $level" || return 1; done
  for levels in "0.8" "0.8 0.9"; do
    LEVELS=$levels WHICH=mp-slt bash "$R/08_combined.sh" && publish "MP-SLT ${levels##* }" || return 1
  done
}

# Second seeds: the same recipe end to end with --seed 2 in SEED2_WORK (its own dense run, with rewind
# points; its data is WORK's). Which cells: `results` picks them (claims.second_seeds) once every claim
# cell is in; the choice is written to SEEDS_PLAN (committed) once, before any of them runs.
SEED2_TRAIN_ARGS=$(sed -E 's/--seed 1( |$)/--seed 2\1/' <<< "$TRAIN_ARGS") SEEDS_PLAN="$PUBLISH/second_seeds.tsv"
in_seed2() { WORK="$SEED2_WORK" TRAIN_ARGS="$SEED2_TRAIN_ARGS" "$@"; }
seed_cell() {  # LABEL SPARSITY: its whole chain in SEED2_WORK (stages already there are skipped)
  case "$1" in
    mp) LEVELS=$2 in_seed2 bash "$R/05_train_mp.sh" ;;
    slt|clt|lt) LEVELS="$(levels_up_to "$2")" in_seed2 bash "$R/06_iterate.sh" "$1" ;;
    "clt (random signs)") in_seed2 bash "$R/07_controls.sh" ;;
    slt-mp) LEVELS=0.5 in_seed2 bash "$R/06_iterate.sh" slt && LEVELS=$2 WHICH=slt-mp in_seed2 bash "$R/08_combined.sh" ;;
    mp-slt) LEVELS=0.5 in_seed2 bash "$R/05_train_mp.sh" &&
      LEVELS="$(levels_up_to "$2" | tr ' ' '\n' | grep -vx 0.5 | paste -sd' ' -)" WHICH=mp-slt in_seed2 bash "$R/08_combined.sh" ;;
    *) echo "error: no recipe for a second seed of $1"; return 1 ;;
  esac && publish "$1 $2, seed 2"
}
seeds_lane() {  # a: the seed-2 dense run, then every chosen cell that starts from it; b: the MP-rooted ones
  local label sparsity
  while IFS=$'\t' read -r -u 3 label sparsity; do
    case "$label" in mp|mp-slt) [ "$1" = b ] || continue ;; *) [ "$1" = a ] || continue ;; esac
    [ "$1" = b ] || in_seed2 bash "$R/02_train_dense.sh" || return 1
    seed_cell "$label" "$sparsity" || return 1
  done 3< "$SEEDS_PLAN"
}
plan_seeds() {
  [ "$SEED2_TRAIN_ARGS" != "$TRAIN_ARGS" ] || { echo "error: TRAIN_ARGS has no '--seed 1' to make seed 2 of"; return 1; }
  mkdir -p "$SEED2_WORK" && ln -sfn "$WORK/data" "$SEED2_WORK/data" &&
    in_seed2 bash -c 'source "$1"' _ "$R/common.sh" || return 1  # its settings claimed before the lanes start
  [ -e "$SEEDS_PLAN" ] && { echo "second seeds (chosen before): $(paste -sd';' "$SEEDS_PLAN")"; return 0; }
  python3 -c 'import json, sys
for cell in json.load(open(sys.argv[1]))["second_seeds"]["cells"]:
    print("%s\t%g" % (cell["label"], cell["sparsity"]))' "$PUBLISH/results.json" > "$SEEDS_PLAN.part" &&
    mv "$SEEDS_PLAN.part" "$SEEDS_PLAN" && publish "the second seeds chosen" || return 1
  echo "second seeds chosen: $(paste -sd';' "$SEEDS_PLAN")"
}

rerun() {  # one committed row (RERUN, a run of WORK) re-run from its recorded command into ${WORK}_rerun
  local again="${WORK}_rerun/$RERUN"
  [ ! -e "$again/.done" ] && [ ! -e "$PUBLISH/rerun.md" ] || { echo "rerun: $RERUN done"; return 0; }
  mkdir -p "$again" && echo "rerun: $RERUN from its run.json command into $again"
  python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))["command"]
c[c.index("--save-dir") + 1] = sys.argv[2]
print("\0".join(c), end="")' "$WORK/$RERUN/run.json" "$again" > "$again.command" || return 1
  local command; mapfile -d '' -t command < "$again.command"
  "${command[@]}" >> "$again.log" 2>&1 || { tail -n 3 "$again.log"; return 1; }
  touch "$again/.done"
}
rerun_check() {  # once the re-run and the cell's second seed are in: is it within its seeds' range (rerun.md)
  [ ! -e "$PUBLISH/rerun.md" ] && [ -e "${WORK}_rerun/$RERUN/.done" ] && [ -e "$SEED2_WORK/.seeds_a_done" ] || return 0
  exec 8> "$WORK/.rerun_check.lock" && flock 8 && [ ! -e "$PUBLISH/rerun.md" ] || return 0  # either lane, once
  fairseq-slt results "${WORK}_rerun" --generate-command "$GENERATE_COMMAND" --beam "$BEAM" --remove-bpe sentencepiece \
    --references "$WORK/data/text/test.$TGT" --chrf --json "${WORK}_rerun/results.json" --force \
    > "${WORK}_rerun/results.log" 2>&1 || { tail -n 3 "${WORK}_rerun/results.log"; return 1; }
  python3 "$R/rerun_check.py" "$PUBLISH/results.json" "${WORK}_rerun/results.json" "$WORK/$RERUN" "$PUBLISH/rerun.md" &&
    { [ -z "${COMMIT_REPO:-}" ] || { git -C "$COMMIT_REPO" add -- "$PUBLISH/rerun.md" &&
      git -C "$COMMIT_REPO" commit -q -m "docs/results/converged: $RERUN re-run from its command" -- "$PUBLISH/rerun.md"; }; }
}

# The second phase needs no barrier inside it: each lane goes on with its own remaining work (lane a: the
# seeds, 1.5 h, the base-size model, 1.7 h until the serving benchmark is committed, and MP-SLT 95/98; lane b:
# the re-run, SLT-MP 80 and the LT and CLT chains), and the re-run is judged by whichever lane finishes its
# part of it last.
rest_a() {  # the seeds of SLT's kin, the base-size model of the serving benchmark, MP-SLT at the remaining levels
  seeds_lane a && touch "$SEED2_WORK/.seeds_a_done" || return 1
  ( rerun_check ) || echo "rerun check failed (lines above); the cells go on, the driver's end tries it again"
  [ -e "$SERVING_OUT" ] || BASE_WORK="$BASE_WORK" bash "$R/13_base_model.sh" || return 1
  for levels in "0.8 0.9 0.95" "0.8 0.9 0.95 0.98"; do
    LEVELS=$levels WHICH=mp-slt bash "$R/08_combined.sh" && publish "MP-SLT ${levels##* }" || return 1
  done
}

rest_b() {  # the re-run and MP's seeds, then SLT-MP 80 % and LT and CLT at every level
  rerun || return 1
  ( rerun_check ) || echo "rerun check failed (lines above); the cells go on, the driver's end tries it again"
  seeds_lane b || return 1
  LEVELS=0.8 WHICH=slt-mp bash "$R/08_combined.sh" && publish "SLT-MP 0.8" || return 1
  for method in lt clt; do
    for level in $LEVELS_ALL; do
      LEVELS="$(levels_up_to "$level")" bash "$R/06_iterate.sh" $method && publish "${method^^} $level" || return 1
    done
  done
}

lanes() {  # NAME A B: A on lane a and B on lane b side by side (only the lanes CHAINS names); fails if either does
  local name="$1" pa="" pb="" failed=""
  case " $CHAINS " in *" a "*) ( set -o pipefail; $2 2>&1 | sed -u 's/^/[a] /' ) & pa=$! ;; esac
  case " $CHAINS " in *" b "*) ( set -o pipefail; $3 2>&1 | sed -u 's/^/[b] /' ) & pb=$! ;; esac
  [ -z "$pa" ] || wait "$pa" || failed=a
  [ -z "$pb" ] || wait "$pb" || failed="${failed:+$failed and }b"
  [ -z "$failed" ] || { echo "error: $name, lane(s) $failed failed (lines above; rerun to resume)"; return 1; }
}

bash "$R/01_prepare.sh" > "$WORK/prepare.log" 2>&1 || { tail -n 5 "$WORK/prepare.log"; exit 1; }
restore || { echo "error: restoring the packed runs of $STORE failed"; exit 1; }
# the second seeds' runs as well once they are chosen, so that the claims phase's publishes keep their rows
[ ! -e "$SEEDS_PLAN" ] || ( WORK="$SEED2_WORK" STORE="$SEED2_STORE" restore ) ||
  { echo "error: restoring $SEED2_STORE failed"; exit 1; }
case " ${CHAINS:=a b} " in *" a "*|*" b "*) ;; *) echo "error: CHAINS must name a, b or both, got $CHAINS"; exit 1 ;; esac
lanes "the claim cells" claims_a claims_b || exit 1
[ "$CHAINS" = "a b" ] || { echo "CHAINS=$CHAINS: the second seeds and later cells wait for both lanes"; exit 0; }
plan_seeds || exit 1
( WORK="$SEED2_WORK" STORE="$SEED2_STORE" restore ) || { echo "error: restoring $SEED2_STORE failed"; exit 1; }
lanes "the second seeds, the re-run and the other cells" rest_a rest_b
rerun_check
# last, alone on the machine: the serving benchmark (14_serving_benchmark.sh), committed to docs/benchmarks once
BASE_WORK="$BASE_WORK" OUT="$SERVING_OUT" bash "$R/14_serving_benchmark.sh"
