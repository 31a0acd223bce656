#!/usr/bin/env bash
# Finished runs kept as packed archives (fairseq-slt pack: compact checkpoints, no optimizer state; ~16 MB for
# a dense run of the recipe's model with its two rewind points), so that a machine that lost WORK goes on from
# them. Sourced with WORK and STORE set: pack_finished packs every run of WORK with a .done marker that STORE
# lacks (as STORE/<its path under WORK>.tar.gz); restore unpacks every archive of STORE whose run is not
# finished in WORK.
stored() { local run="${1%/.done}"; echo "$STORE/${run#"$WORK"/}.tar.gz"; }
pack_finished() {  # the finished runs not packed yet, so that a new machine goes on from them (restore)
  find "$WORK" -mindepth 2 -name .done -not -path '*/.tmp-*' | sort | while read -r done; do
    [ -e "$(stored "$done")" ] || fairseq-slt pack "${done%/.done}" "$(stored "$done")" || return 1
  done
}
restore() {  # a machine that lost WORK: every packed run back in place, with its cached scores
  [ -d "$STORE" ] || return 0
  find "$STORE" -name '*.tar.gz' | sort | while read -r archive; do
    local run="$WORK/${archive#"$STORE"/}"; run="${run%.tar.gz}"
    [ -e "$run/.done" ] || fairseq-slt unpack "$archive" "$run" --force || return 1
  done
}
