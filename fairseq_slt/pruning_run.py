"""What one ``fairseq-train`` run does about pruning: mask, rewind, enforcement, rewind points.

Called by the ``translation_slt`` task; holds no fairseq import so it can be tested directly.
"""
import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .checkpoints import Checkpoint, rewind_point_path, write_model_checkpoint
from .pruning import (Mask, MaskEnforcer, PruningError, check_sparsity, magnitude_mask, prunable_parameters,
                      random_mask)
from .master_weights import master_copies, sync_master_weights
from .pruning.reinit import constant_weights
from .pruning.schedule import check_schedule, cubic_sparsity, is_pruning_step

logger = logging.getLogger(__name__)

METHODS = ("none", "lt", "slt", "clt", "mp")
FROM_CHECKPOINT = ("lt", "slt", "clt")  # methods whose mask and weights must come from earlier runs
CONTROLS = {"prune_random_mask": FROM_CHECKPOINT, "prune_reinit": FROM_CHECKPOINT, "prune_clt_random_signs": ("clt",)}
MASK_FILE, REPORT_FILE = "mask.pt", "mask_report.json"


def parse_rewind_points(text: Optional[str]) -> List[int]:
    if not text:
        return []
    try:
        points = sorted({int(p) for p in str(text).split(",") if p.strip()})
    except ValueError:
        raise PruningError(f"--save-rewind-points must be comma-separated update numbers, got {text!r}") from None
    if points and points[0] < 0:
        raise PruningError(f"--save-rewind-points must not be negative, got {text!r}")
    return points


def validate_options(cfg) -> None:
    """Checks that need no model: one PruningError before anything is built or written."""
    if cfg.prune_method not in METHODS:
        raise PruningError(f"--prune-method must be one of {', '.join(METHODS)}, got {cfg.prune_method!r}")
    points = parse_rewind_points(cfg.save_rewind_points)
    max_update = int(cfg.max_update or 0)
    if points and max_update > 0 and points[-1] > max_update:
        raise PruningError(f"rewind point {points[-1]} is beyond the run's --max-update {max_update}")
    for control, methods in CONTROLS.items():
        if getattr(cfg, control) and cfg.prune_method not in methods:
            raise PruningError(f"--{control.replace('_', '-')} applies to --prune-method {'/'.join(methods)}")
    if cfg.prune_method == "none":
        return
    check_sparsity(cfg.prune_sparsity, "--prune-sparsity")
    if cfg.prune_method == "mp":
        check_schedule(cfg.prune_initial_sparsity, cfg.prune_sparsity, cfg.prune_start, cfg.prune_end,
                       cfg.prune_frequency)
    for option, path in (("--prune-mask-from", cfg.prune_mask_from), ("--prune-rewind-from", cfg.prune_rewind_from)):
        if not path and cfg.prune_method in FROM_CHECKPOINT:
            raise PruningError(f"--prune-method {cfg.prune_method} needs {option}")
        if path and not os.path.isfile(path):
            raise PruningError(f"{option} checkpoint not found: {path}")


class PruningRun:
    """``fresh_init``: a seeded fairseq initialisation of the model, for the --prune-reinit control."""

    def __init__(self, cfg, model: torch.nn.Module, full_config: Callable[[], dict],
                 fresh_init: Optional[Dict[str, torch.Tensor]] = None):
        self.cfg, self.model, self.full_config = cfg, model, full_config
        self.method = cfg.prune_method
        self.rewind_points = parse_rewind_points(cfg.save_rewind_points)
        self.params = prunable_parameters(model.named_parameters(), cfg.prune_params)
        self.enforcer = MaskEnforcer(self.params)
        self.started, self.resumed, self.epoch = False, False, 1
        self.masters: List[Tuple[torch.nn.Parameter, torch.Tensor]] = []  # fp16: the optimizer's fp32 copies
        self._stats: Optional[Dict[str, int]] = None
        self.mask_written: Optional[Mask] = None
        self.pending_mask: Optional[Mask] = None
        self.rewind_state: Optional[Dict[str, torch.Tensor]] = None
        self.start_sparsity = 0.0  # mp without source checkpoints: s_0 applied to the starting weights
        if self.method in FROM_CHECKPOINT or self.method == "mp":
            self._prepare(fresh_init)

    @property
    def is_master(self) -> bool:
        return int(self.cfg.distributed_rank or 0) == 0

    @property
    def mask(self) -> Optional[Mask]:
        return self.enforcer.mask

    def fingerprint(self) -> dict:
        """Identifies the run: a restored task state resumes it only when this matches."""
        paths = {k: os.path.abspath(v) if v else None
                 for k, v in (("mask_from", self.cfg.prune_mask_from), ("rewind_from", self.cfg.prune_rewind_from))}
        options = ("prune_sparsity", "prune_scope", "prune_params", "prune_initial_sparsity", "prune_start",
                   "prune_end", "prune_frequency", *CONTROLS, "prune_seed")
        return {"method": self.method, **paths, **{k: getattr(self.cfg, k) for k in options}}

    # set-up (before training): every bad input fails here
    def _load(self, path: Optional[str], option: str, model_state) -> Optional[Checkpoint]:
        if not path:
            return None
        checkpoint = Checkpoint(path, f"{option} checkpoint")
        checkpoint.check_matches(model_state)
        return checkpoint

    def _prepare(self, fresh_init: Optional[Dict[str, torch.Tensor]]) -> None:
        cfg, model_state = self.cfg, self.model.state_dict()
        source = self._load(cfg.prune_mask_from, "--prune-mask-from", model_state)
        rewind = self._load(cfg.prune_rewind_from, "--prune-rewind-from", model_state)
        if rewind is not None:
            self._check_rewind_update(rewind.num_updates)
        previous = source.mask() if source is not None else None
        if previous is not None:
            previous.check_matches(self.params, f"weight matrices --prune-params selects ({source.path})", exact=True)
        sparsity = cfg.prune_sparsity
        if self.method == "mp":  # the starting mask: s_0, at least the source mask's sparsity
            sparsity = max(cfg.prune_initial_sparsity, previous.sparsity() if previous is not None else 0.0)
            if sparsity > cfg.prune_sparsity:
                raise PruningError(f"the starting mask's sparsity {sparsity:.4f} is above the final --prune-sparsity "
                                   f"{cfg.prune_sparsity}")
            self.initial_sparsity = sparsity
        if source is None and rewind is None:  # mp from the run's own weights, known only at start()
            self.pending_mask = Mask.ones_like(self.params)
            self.start_sparsity = sparsity
            return
        start_weights = rewind.model if rewind is not None else model_state
        scored = source.model if source is not None else start_weights
        weights = {name: scored[name] for name in self.params}
        self.pending_mask = magnitude_mask(weights, sparsity, previous, cfg.prune_scope)
        if cfg.prune_random_mask:
            self.pending_mask = random_mask(weights, self.pending_mask, cfg.prune_seed, previous)
        start = fresh_init if cfg.prune_reinit else start_weights
        self.rewind_state = {name: start[name] for name in model_state}
        logger.info(f"{self.method}: starting mask at sparsity {self.pending_mask.sparsity():.4f}"
                    f"{' (random)' if cfg.prune_random_mask else ''} from {source.path if source else 'the start weights'}; "
                    f"weights from {'a fresh init' if cfg.prune_reinit else rewind.path if rewind else 'the model init'}")

    def _check_rewind_update(self, update: Optional[int]) -> None:
        if self.method == "lt" and update not in (None, 0):
            raise PruningError(f"--prune-method lt rewinds to update 0, but --prune-rewind-from is from update {update}")
        if self.method in ("slt", "clt") and update == 0:
            raise PruningError(f"--prune-method {self.method} rewinds to update k > 0; "
                               "a checkpoint from update 0 is --prune-method lt")

    # training hooks
    def start(self, update_num: int, optimizer=None) -> None:
        """Before the first forward pass of this process (after any checkpoint was restored)."""
        if self.started:
            return
        self.started = True
        self.masters = master_copies(optimizer)  # fixed for the optimizer's life: found once, used every step
        if not self.resumed and self.start_sparsity:  # mp with s_0 > 0 from the weights it starts with
            self.pending_mask = magnitude_mask(self.params, self.start_sparsity, None, self.cfg.prune_scope)
        if not self.resumed and self.pending_mask is not None:
            if self.rewind_state is not None:
                torch.nn.Module.load_state_dict(self.model, self.rewind_state, strict=True)
            if self.method == "clt":
                self._set_constant_weights()
            self.enforcer.set_mask(self.pending_mask)
            self._stats = None
            if sync_master_weights(self.masters):
                logger.info("copied the rewound weights into the optimizer's fp32 master weights")
            self.write_mask_files()
        self.pending_mask = self.rewind_state = None
        if update_num == 0 and 0 in self.rewind_points:
            self.save_rewind_point(0)

    @torch.no_grad()
    def _set_constant_weights(self) -> None:
        seed = self.cfg.prune_seed if self.cfg.prune_clt_random_signs else None
        for name, value in constant_weights(self.params, self.pending_mask, seed).items():
            self.params[name].copy_(value)

    def after_step(self, update_num: int) -> None:
        """After the optimizer step of update ``update_num`` (0-based): prune (mp), re-apply the mask,
        save rewind points."""
        done, cfg = update_num + 1, self.cfg
        self._stats = None
        if self.method == "mp" and is_pruning_step(done, cfg.prune_start, cfg.prune_end, cfg.prune_frequency):
            target = cubic_sparsity(done, self.initial_sparsity, cfg.prune_sparsity, cfg.prune_start, cfg.prune_end)
            self.enforcer.set_mask(magnitude_mask(self.params, target, self.mask, cfg.prune_scope))
        else:
            self.enforcer.apply()
        self.enforcer.apply_to_copies(self.masters)  # fp16: the fp32 masters too
        if done in self.rewind_points:
            self.save_rewind_point(done)

    def save_rewind_point(self, update: int) -> None:
        if not self.is_master:
            return
        path = rewind_point_path(self.cfg.save_dir, update)
        write_model_checkpoint(path, self.model.state_dict(), self.full_config(), update, self.epoch,
                               self.checkpoint_dict())
        logger.info(f"saved rewind point (weights after {update} updates) to {path}")

    def write_mask_files(self) -> None:
        mask = self.mask
        if mask is None or not self.is_master or mask is self.mask_written:
            return
        mask.save(os.path.join(self.cfg.save_dir, MASK_FILE), os.path.join(self.cfg.save_dir, REPORT_FILE))
        self.mask_written = mask

    # statistics for the criterion's log lines: computed once per update (the weights change only then)
    def stats(self) -> Dict[str, int]:
        if self._stats is None:
            with torch.no_grad():
                zeros = sum(int((p == 0).sum()) for p in self.params.values())
            self._stats = {"slt_weights": sum(p.numel() for p in self.params.values()), "slt_zeros": zeros,
                           "slt_masked_nonzero": self.enforcer.masked_nonzero(), "slt_reports": 1}
        return dict(self._stats)

    # checkpointed state
    def checkpoint_dict(self) -> dict:
        self.write_mask_files()
        return {"fingerprint": self.fingerprint(), "mask": self.mask.state_dict() if self.mask is not None else None}

    def load_checkpoint_dict(self, state: dict) -> None:
        """A run's own checkpoint_last always resumes; another run's checkpoint (--restore-file) resumes
        only when it was written with the same pruning options, else this run starts afresh from it."""
        same = state.get("fingerprint") == self.fingerprint()
        own = self.cfg.restore_file == "checkpoint_last.pt"
        if not (same or own):
            logger.info("the restored checkpoint belongs to another pruning run: starting this run afresh")
            return
        if not same:
            logger.warning("pruning options changed since this run's checkpoint; continuing with its mask")
        self.resumed = True
        self._stats = None
        if state.get("mask") is not None:
            self.enforcer.set_mask(Mask.from_state_dict(state["mask"], source="mask in the restored checkpoint"))
            self.mask_written = None
