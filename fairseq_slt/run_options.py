"""A pruning run's options: validated before anything is built, and the identity they give the run.

No fairseq import: the task passes its config in.
"""
import os
from typing import List, Optional

from .pruning import UserError, check_sparsity
from .pruning.magnitude import SCOPES
from .pruning.methods import RANDOM_MASK, RANDOM_SIGNS, REINIT, TABLE, method
from .pruning.pattern import kept_per_group, parse_pattern, pattern_sparsity
from .pruning.schedule import check_schedule

CONTROLS = (RANDOM_MASK, REINIT, RANDOM_SIGNS)
SCHEDULE_OPTIONS = ("prune_initial_sparsity", "prune_start", "prune_end", "prune_frequency")
CPU_DDP_BACKENDS = ("legacy_ddp", "no_c10d")  # the others pass device_ids or need a GPU


def parse_rewind_points(text: Optional[str]) -> List[int]:
    if not text:
        return []
    try:
        points = sorted({int(p) for p in str(text).split(",") if p.strip()})
    except ValueError:
        raise UserError(f"--save-rewind-points must be comma-separated update numbers, got {text!r}") from None
    if points and points[0] < 0:
        raise UserError(f"--save-rewind-points must not be negative, got {text!r}")
    return points


def validate_options(cfg, check_files: bool = True) -> None:
    """Checks that need no model: one UserError before anything is built or written (``check_files``:
    that the checkpoints named exist; off for a plan of commands whose inputs come later)."""
    chosen = method(cfg.prune_method)
    points = parse_rewind_points(cfg.save_rewind_points)
    max_update = int(cfg.max_update or 0)
    if points and max_update > 0 and points[-1] > max_update:
        raise UserError(f"rewind point {points[-1]} is beyond the run's --max-update {max_update}")
    if cfg.prune_scope not in SCOPES:
        raise UserError(f"--prune-scope must be one of {', '.join(SCOPES)}, got {cfg.prune_scope!r}")
    if cfg.cpu and int(cfg.distributed_world_size or 1) > 1 and cfg.ddp_backend not in CPU_DDP_BACKENDS:
        raise UserError(f"--ddp-backend {cfg.ddp_backend} does not run on CPU with several processes; "
                           f"use {' or '.join(CPU_DDP_BACKENDS)}")
    for control in CONTROLS:
        if getattr(cfg, control) and control not in chosen.controls:
            takers = [m.name for m in TABLE.values() if control in m.controls]
            raise UserError(f"--{control.replace('_', '-')} applies to --prune-method {'/'.join(takers)}")
    restore = getattr(cfg, "restore_file", None)
    if check_files and restore and restore != "checkpoint_last.pt" and not os.path.isfile(restore):
        raise UserError(f"--restore-file not found: {restore} (fairseq would start from scratch)")
    if not chosen.prunes:
        given = [option for option, value in (("--prune-sparsity", cfg.prune_sparsity), ("--prune-mask-from",
                 cfg.prune_mask_from), ("--prune-rewind-from", cfg.prune_rewind_from)) if value]
        if given:
            pruning = ", ".join(m.name for m in TABLE.values() if m.prunes)
            raise UserError(f"{given[0]} has no effect with --prune-method {chosen} (a dense run): "
                            f"choose a method ({pruning}) or drop it")
        return
    check_sparsity(cfg.prune_sparsity, "--prune-sparsity")
    pattern = parse_pattern(getattr(cfg, "prune_pattern", None))
    if pattern is not None:
        n, m = pattern
        if cfg.prune_scope != "layer":
            raise UserError(f"--prune-pattern {n}:{m} is a per-group mask: it takes --prune-scope layer")
        if abs(cfg.prune_sparsity - pattern_sparsity(pattern)) > 1e-9:
            raise UserError(f"--prune-pattern {n}:{m} keeps {n} of every {m} weights: --prune-sparsity must be "
                            f"{pattern_sparsity(pattern):g}, got {cfg.prune_sparsity}")
        if chosen.gradual and kept_per_group(cfg.prune_initial_sparsity, m) < n:
            raise UserError(f"--prune-initial-sparsity {cfg.prune_initial_sparsity} keeps fewer than {n} of {m}")
    if chosen.gradual:
        check_schedule(cfg.prune_initial_sparsity, cfg.prune_sparsity, cfg.prune_start, cfg.prune_end,
                       cfg.prune_frequency)
        if max_update > 0 and cfg.prune_end > max_update:
            raise UserError(f"--prune-end {cfg.prune_end} is beyond the run's --max-update {max_update}: the run "
                               f"would stop before reaching --prune-sparsity {cfg.prune_sparsity}")
    for option, path in (("--prune-mask-from", cfg.prune_mask_from), ("--prune-rewind-from", cfg.prune_rewind_from)):
        if not path and chosen.from_checkpoints:
            raise UserError(f"--prune-method {cfg.prune_method} needs {option}")
        if check_files and path and not os.path.isfile(path):
            raise UserError(f"{option} checkpoint not found: {path}")


NAMED = {"method": "--prune-method", "mask_from": "--prune-mask-from", "rewind_from": "--prune-rewind-from",
         "dictionaries": "the data's dictionaries"}  # identity keys that are not the option's own field name


def option_of(key: str) -> str:
    """The command-line option (or input) a user changes to change an identity key."""
    return NAMED.get(key, "--" + key.replace("_", "-"))


def run_identity(cfg, dictionaries: Optional[str]) -> dict:
    """What makes a run this run (recorded in its save dir and checkpoints; see run_dir)."""
    identity, chosen = {"method": cfg.prune_method}, method(cfg.prune_method)
    if chosen.prunes:
        identity.update({k: os.path.abspath(v) if v else None
                         for k, v in (("mask_from", cfg.prune_mask_from), ("rewind_from", cfg.prune_rewind_from))})
        identity.update({k: getattr(cfg, k) for k in ("prune_sparsity", "prune_scope", "prune_params")})
        if getattr(cfg, "prune_pattern", None):  # only when given: the identities of unstructured runs are unchanged
            identity["prune_pattern"] = cfg.prune_pattern
        if chosen.gradual:
            identity.update({k: getattr(cfg, k) for k in SCHEDULE_OPTIONS})
        identity.update({k: getattr(cfg, k) for k in CONTROLS if k in chosen.controls})
        identity["prune_seed"] = cfg.prune_seed
        identity["prune_dense_gradients"] = bool(getattr(cfg, "prune_dense_gradients", False))
    identity.update({"seed": cfg.seed, "dictionaries": dictionaries})
    return identity
