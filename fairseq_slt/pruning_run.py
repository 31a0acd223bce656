"""What one ``fairseq-train`` run does about pruning: mask, rewind, enforcement, rewind points.

Called by the ``translation_slt`` task; holds no fairseq import so it can be tested directly.
"""
import logging
import os
from typing import Callable, Dict, List, Optional

import torch

from .checkpoints import Checkpoint, rewind_point_path, write_model_checkpoint
from .pruning import Mask, MaskEnforcer, PruningError, check_sparsity, magnitude_mask, prunable_parameters

logger = logging.getLogger(__name__)

METHODS = ("none", "lt", "slt")
FROM_CHECKPOINT = ("lt", "slt")  # methods whose mask and weights come from earlier runs
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
    if cfg.prune_method == "none":
        return
    check_sparsity(cfg.prune_sparsity, "--prune-sparsity")
    if cfg.prune_method in FROM_CHECKPOINT:
        for option, path in (("--prune-mask-from", cfg.prune_mask_from), ("--prune-rewind-from", cfg.prune_rewind_from)):
            if not path:
                raise PruningError(f"--prune-method {cfg.prune_method} needs {option}")
            if not os.path.isfile(path):
                raise PruningError(f"{option} checkpoint not found: {path}")


class PruningRun:
    def __init__(self, cfg, model: torch.nn.Module, full_config: Callable[[], dict]):
        self.cfg, self.model, self.full_config = cfg, model, full_config
        self.method = cfg.prune_method
        self.rewind_points = parse_rewind_points(cfg.save_rewind_points)
        self.params = prunable_parameters(model.named_parameters(), cfg.prune_params)
        self.enforcer = MaskEnforcer(self.params)
        self.started, self.resumed, self.epoch = False, False, 1
        self.mask_written: Optional[Mask] = None
        self.pending_mask: Optional[Mask] = None
        self.rewind_state: Optional[Dict[str, torch.Tensor]] = None
        if self.method in FROM_CHECKPOINT:
            self._prepare_from_checkpoints()

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
        return {"method": self.method, "sparsity": float(self.cfg.prune_sparsity), "scope": self.cfg.prune_scope,
                "params": self.cfg.prune_params, **paths}

    # set-up (before training): every bad input fails here
    def _prepare_from_checkpoints(self) -> None:
        model_state = self.model.state_dict()
        source = Checkpoint(self.cfg.prune_mask_from, "--prune-mask-from checkpoint")
        source.check_matches(model_state)
        rewind = Checkpoint(self.cfg.prune_rewind_from, "--prune-rewind-from checkpoint")
        rewind.check_matches(model_state)
        self._check_rewind_update(rewind.num_updates)
        previous = source.mask()
        if previous is not None:
            previous.check_matches(self.params, "model")
            if set(previous) != set(self.params):
                raise PruningError(f"the mask in {source.path} covers other parameters than --prune-params selects")
        weights = {name: source.model[name] for name in self.params}
        self.pending_mask = magnitude_mask(weights, self.cfg.prune_sparsity, previous, self.cfg.prune_scope)
        self.rewind_state = {name: rewind.model[name] for name in model_state}
        logger.info(f"{self.method}: mask at sparsity {self.pending_mask.sparsity():.4f} from {source.path}, "
                    f"weights from {rewind.path} (update {rewind.num_updates})")

    def _check_rewind_update(self, update: Optional[int]) -> None:
        if self.method == "lt" and update not in (None, 0):
            raise PruningError(f"--prune-method lt rewinds to update 0, but --prune-rewind-from is from update {update}")
        if self.method == "slt" and update == 0:
            raise PruningError("--prune-method slt rewinds to update k > 0; a checkpoint from update 0 is --prune-method lt")

    # training hooks
    def start(self, update_num: int) -> None:
        """Before the first forward pass of this process (after any checkpoint was restored)."""
        if self.started:
            return
        self.started = True
        if not self.resumed and self.pending_mask is not None:
            torch.nn.Module.load_state_dict(self.model, self.rewind_state, strict=True)
            self.enforcer.set_mask(self.pending_mask)
            self.write_mask_files()
        self.pending_mask = self.rewind_state = None
        if update_num == 0 and 0 in self.rewind_points:
            self.save_rewind_point(0)

    def after_step(self, update_num: int) -> None:
        """After the optimizer step of update ``update_num`` (0-based): re-apply the mask, save rewind points."""
        self.enforcer.apply()
        if update_num + 1 in self.rewind_points:
            self.save_rewind_point(update_num + 1)

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

    # statistics for the criterion's log lines
    def stats(self) -> Dict[str, int]:
        with torch.no_grad():
            zeros = sum(int((p == 0).sum()) for p in self.params.values())
        return {"slt_weights": sum(p.numel() for p in self.params.values()), "slt_zeros": zeros,
                "slt_masked_nonzero": self.enforcer.masked_nonzero(), "slt_reports": 1}

    # checkpointed state
    def checkpoint_dict(self) -> dict:
        self.write_mask_files()
        return {"fingerprint": self.fingerprint(), "mask": self.mask.state_dict() if self.mask is not None else None}

    def load_checkpoint_dict(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint():
            logger.info("restored checkpoint belongs to another pruning run: starting this run afresh")
            return
        self.resumed = True
        if state.get("mask") is not None:
            self.enforcer.set_mask(Mask.from_state_dict(state["mask"], source="mask in the restored checkpoint"))
            self.mask_written = None
