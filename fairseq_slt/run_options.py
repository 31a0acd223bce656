"""A pruning run's options: validated before anything is built, and the identity they give the run.

No fairseq import: the task passes its config in.
"""
import os
from typing import List, Optional

from .pruning import UserError, check_sparsity
from .pruning.magnitude import SCOPES
from .pruning.schedule import check_schedule

METHODS = ("none", "lt", "slt", "clt", "mp")
FROM_CHECKPOINT = ("lt", "slt", "clt")  # methods whose mask and weights must come from earlier runs
CONTROLS = {"prune_random_mask": FROM_CHECKPOINT, "prune_reinit": FROM_CHECKPOINT, "prune_clt_random_signs": ("clt",)}
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
    if cfg.prune_method not in METHODS:
        raise UserError(f"--prune-method must be one of {', '.join(METHODS)}, got {cfg.prune_method!r}")
    points = parse_rewind_points(cfg.save_rewind_points)
    max_update = int(cfg.max_update or 0)
    if points and max_update > 0 and points[-1] > max_update:
        raise UserError(f"rewind point {points[-1]} is beyond the run's --max-update {max_update}")
    if cfg.prune_scope not in SCOPES:
        raise UserError(f"--prune-scope must be one of {', '.join(SCOPES)}, got {cfg.prune_scope!r}")
    if cfg.cpu and int(cfg.distributed_world_size or 1) > 1 and cfg.ddp_backend not in CPU_DDP_BACKENDS:
        raise UserError(f"--ddp-backend {cfg.ddp_backend} does not run on CPU with several processes; "
                           f"use {' or '.join(CPU_DDP_BACKENDS)}")
    for control, methods in CONTROLS.items():
        if getattr(cfg, control) and cfg.prune_method not in methods:
            raise UserError(f"--{control.replace('_', '-')} applies to --prune-method {'/'.join(methods)}")
    restore = getattr(cfg, "restore_file", None)
    if check_files and restore and restore != "checkpoint_last.pt" and not os.path.isfile(restore):
        raise UserError(f"--restore-file not found: {restore} (fairseq would start from scratch)")
    if cfg.prune_method == "none":
        given = [option for option, value in (("--prune-sparsity", cfg.prune_sparsity), ("--prune-mask-from",
                 cfg.prune_mask_from), ("--prune-rewind-from", cfg.prune_rewind_from)) if value]
        if given:
            raise UserError(f"{given[0]} has no effect with --prune-method none (a dense run): "
                               "choose a method (lt, slt, clt, mp) or drop it")
        return
    check_sparsity(cfg.prune_sparsity, "--prune-sparsity")
    if cfg.prune_method == "mp":
        check_schedule(cfg.prune_initial_sparsity, cfg.prune_sparsity, cfg.prune_start, cfg.prune_end,
                       cfg.prune_frequency)
        if max_update > 0 and cfg.prune_end > max_update:
            raise UserError(f"--prune-end {cfg.prune_end} is beyond the run's --max-update {max_update}: the run "
                               f"would stop before reaching --prune-sparsity {cfg.prune_sparsity}")
    for option, path in (("--prune-mask-from", cfg.prune_mask_from), ("--prune-rewind-from", cfg.prune_rewind_from)):
        if not path and cfg.prune_method in FROM_CHECKPOINT:
            raise UserError(f"--prune-method {cfg.prune_method} needs {option}")
        if check_files and path and not os.path.isfile(path):
            raise UserError(f"{option} checkpoint not found: {path}")


def run_identity(cfg, dictionaries: Optional[str]) -> dict:
    """What makes a run this run (recorded in its save dir and checkpoints; see run_dir)."""
    identity = {"method": cfg.prune_method}
    if cfg.prune_method != "none":
        identity.update({k: os.path.abspath(v) if v else None
                         for k, v in (("mask_from", cfg.prune_mask_from), ("rewind_from", cfg.prune_rewind_from))})
        identity.update({k: getattr(cfg, k) for k in ("prune_sparsity", "prune_scope", "prune_params")})
        if cfg.prune_method == "mp":
            identity.update({k: getattr(cfg, k) for k in SCHEDULE_OPTIONS})
        identity.update({k: getattr(cfg, k) for k, methods in CONTROLS.items() if cfg.prune_method in methods})
        identity["prune_seed"] = cfg.prune_seed
        identity["prune_dense_gradients"] = bool(getattr(cfg, "prune_dense_gradients", False))
    identity.update({"seed": cfg.seed, "dictionaries": dictionaries})
    return identity
