"""What one ``fairseq-train`` run does about pruning: the hooks the ``translation_slt`` task calls (start,
after each step, statistics, checkpoint state) in an explicit phase (new, resume, running).

No fairseq import: it runs on any ``nn.Module`` and is tested directly.
"""
import atexit
import enum
import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import folder
from ..checkpoints import Checkpoint, rewind_point_path, write_model_checkpoint
from ..pruning import Mask, MaskEnforcer, UserError, prunable_parameters
from ..pruning.methods import method
from ..pruning.pattern import check_shapes, parse_pattern
from ..pruning.reinit import constant_weights
from ..pruning.schedule import Schedule
from .masters import ema_copies, master_copies, sync_master_weights
from .options import parse_rewind_points, run_identity
from .plan import MaskMaker, StartPlan, prepare
from .ranks import check_ranks

logger = logging.getLogger(__name__)
MASK_FILE, REPORT_FILE = "mask.pt", "mask_report.json"


_WATCHED: List["PruningRun"] = []  # the process's last started run, checked at exit (one: a process training
# runs one after another keeps no earlier run's model alive)


def _watch_at_exit(run: "PruningRun") -> None:
    if not _WATCHED:
        atexit.register(lambda: [watched.warn_if_short() for watched in _WATCHED])
    _WATCHED[:] = [run]


class Phase(enum.Enum):
    NEW = "new"  # starts afresh: its mask and start weights are applied at the first update
    RESUME = "resume"  # continues a checkpoint of this run: its stored mask, the weights fairseq restores
    RUNNING = "running"


class PruningRun:
    """``fresh_init``: a seeded fairseq initialisation of the model, for the --prune-reinit control;
    ``dictionaries``: a digest of the run's source and target dictionaries."""

    def __init__(self, cfg, model: torch.nn.Module, full_config: Callable[[], dict],
                 fresh_init: Optional[Dict[str, torch.Tensor]] = None, dictionaries: Optional[str] = None):
        if getattr(cfg, "checkpoint_suffix", ""):  # a rerun restarted as a new run: weights rewound over resumed ones
            raise UserError(f"--checkpoint-suffix {cfg.checkpoint_suffix}: a fairseq-slt run keeps fairseq's checkpoint "
                            "names (checkpoint_last.pt), which its resume, its recovery after a torn save and its tools "
                            "read; drop it")
        self.cfg, self.model, self.full_config = cfg, model, full_config
        self.method, self.dictionaries = method(cfg.prune_method), dictionaries
        self.rewind_points = parse_rewind_points(cfg.save_rewind_points)
        self.params = prunable_parameters(model.named_parameters(), cfg.prune_params)
        pattern = parse_pattern(getattr(cfg, "prune_pattern", None))  # N:M, or None: unstructured
        if pattern is not None:
            check_shapes(self.params, pattern)
        self.masks = MaskMaker(cfg.prune_scope, pattern, cfg.prune_seed)
        self.enforcer = MaskEnforcer(self.params, zero_gradients=not getattr(cfg, "prune_dense_gradients", False))
        self.identity = run_identity(cfg, dictionaries)
        self.epoch, self.updates_done = 1, 0
        self.masters: List[Tuple[torch.nn.Parameter, torch.Tensor]] = []  # fp16: the optimizer's fp32 copies
        self.averages: List[Tuple[torch.nn.Parameter, torch.Tensor]] = []  # --store-ema: the average's copies
        self._stats: Optional[Dict[str, int]] = None
        self.mask_written: Optional[Mask] = None
        self.initial_sparsity = float(cfg.prune_initial_sparsity)  # mp: s_0 of the schedule
        self.plan: Optional[StartPlan] = None  # a new pruning run's mask and weights, applied at the first update
        self.writes = not getattr(cfg, "no_save", False)  # --no-save: nothing written to the save dir
        owned = folder.claim(cfg.save_dir, self.identity, self.is_master, self.writes)
        resume = self._checkpoint_to_resume(owned)
        self.phase = Phase.RESUME if resume is not None else Phase.NEW
        self.resumed_from = resume.path if resume is not None else None
        if resume is not None:
            self._resume(resume)
        elif self.method.prunes:
            self.plan = prepare(cfg, self.method, self.params, model.state_dict(), self.masks, dictionaries, fresh_init)
            if self.method.gradual:
                self.initial_sparsity = self.plan.sparsity  # mp's s_0: at least the source mask's sparsity

    @property
    def schedule(self) -> Schedule:
        cfg = self.cfg
        return Schedule(self.method.gradual, self.initial_sparsity, cfg.prune_sparsity, cfg.prune_start, cfg.prune_end,
                        cfg.prune_frequency)

    @property
    def is_master(self) -> bool:
        return int(self.cfg.distributed_rank or 0) == 0

    @property
    def mask(self) -> Optional[Mask]:
        return self.enforcer.mask

    @property
    def own_last(self) -> str:
        return os.path.join(self.cfg.save_dir, folder.LAST)

    # set-up (before training): every bad input fails here
    def _checkpoint_to_resume(self, owned: bool) -> Optional[Checkpoint]:
        """The run's own checkpoint_last.pt; else a --restore-file written by a run of the same identity."""
        if owned and os.path.isfile(self.own_last):
            return Checkpoint(self.own_last, "this run's checkpoint", mmap=True)
        restore = self.cfg.restore_file
        if restore and restore != folder.LAST and os.path.isfile(restore):
            other = Checkpoint(restore, "--restore-file checkpoint", mmap=True)
            if other.task_state.get("identity") == self.identity:
                return other
        return None

    def _resume(self, checkpoint: Checkpoint) -> None:
        mask = checkpoint.mask()
        if self.method.prunes and mask is None:
            raise UserError(f"{checkpoint.path} holds no mask, but this is a {self.method} run")
        if mask is not None:
            try:
                self.enforcer.set_mask(mask)
            except UserError as err:
                raise UserError(f"the mask in {checkpoint.path} does not fit the model: {err}") from None
        schedule = checkpoint.task_state.get("schedule") or {}
        self.initial_sparsity = float(schedule.get("initial_sparsity", self.initial_sparsity))
        logger.info(f"resuming from {checkpoint.path}" + (f" with its stored mask (sparsity {mask.sparsity():.4f}); "
                                                          "no mask is computed" if mask is not None else ""))

    # training hooks
    def start(self, update_num: int, optimizer=None) -> Optional[Phase]:
        """Before the first forward pass of this process (after any checkpoint was restored): applies the
        phase's mask and weights; returns the phase it started from (None when already running)."""
        if self.phase is Phase.RUNNING:
            return None
        started_from, self.phase = self.phase, Phase.RUNNING
        self.updates_done = update_num
        self.masters = master_copies(optimizer)  # fixed for the optimizer's life: found once, used every step
        if started_from is Phase.NEW and self.plan is not None:
            if self.plan.weights is not None:
                torch.nn.Module.load_state_dict(self.model, self.plan.weights, strict=True)
            mask = self.plan.mask  # else mp's s_0 from the weights it starts with
            mask = mask if mask is not None else self.masks.magnitude(self.params, self.initial_sparsity, None)
            if self.method.kept_weights == "constant":
                self._set_constant_weights(mask)
            self.enforcer.set_mask(mask)
            if sync_master_weights(self.masters):
                logger.info("copied the rewound weights into the optimizer's fp32 master weights")
        elif self.mask is not None:  # resumed: the restored weights must already respect the stored mask
            regrown = self.enforcer.masked_nonzero(self.masters)
            if regrown:
                logger.warning(f"{regrown} pruned positions of the restored checkpoint held nonzero weights; "
                               "zeroed them")
            self.enforcer.apply()
            self.enforcer.apply_to_copies(self.masters)
        self.plan = None  # applied: the weights it held are not kept
        self._stats = None
        self.check_ranks(f"the {started_from.value} run's start", weights=True)
        if self.is_master and self.writes:
            folder.write_manifest(self.cfg.save_dir, self.identity)
        self.write_mask_files()
        if update_num == 0 and 0 in self.rewind_points:
            self.save_rewind_point(0)
        if self.is_master:
            _watch_at_exit(self)
        return started_from

    def warn_if_short(self) -> None:
        """At exit: a run that stopped before its schedule's end (--stop-time-hours, Ctrl-C, a crash) says so."""
        done, cfg = self.updates_done, self.cfg
        if self.mask is None or self.schedule.reached(done):
            return
        logger.warning(f"the run stopped after update {done}, before its schedule reached sparsity "
                       f"{cfg.prune_sparsity:g} (update {cfg.prune_end}): its mask is at sparsity "
                       f"{self.mask.sparsity():.4f}, and its checkpoint_best.pt is only written from the target on; "
                       "the same command goes on (fairseq counts --stop-time-hours over every session)")

    @torch.no_grad()
    def _set_constant_weights(self, mask: Mask) -> None:
        seed = self.cfg.prune_seed if self.cfg.prune_clt_random_signs else None
        for name, value in constant_weights(self.params, mask, seed).items():
            self.params[name].copy_(value)

    def after_step(self, update_num: int) -> None:
        """After the optimizer step of update ``update_num`` (0-based): prune (mp), re-apply the mask,
        save rewind points."""
        done, cfg = update_num + 1, self.cfg
        self.updates_done = done
        self._stats = None
        target = self.schedule.target_at(done)
        if target is not None:
            self.enforcer.set_mask(self.masks.magnitude(self.params, target, self.mask))
            self.check_ranks(f"update {done}")
        else:
            self.enforcer.apply()
        self.enforcer.apply_to_copies(self.masters)  # fp16: the fp32 masters too
        if done == int(cfg.max_update or 0):
            self.check_ranks(f"the last update ({done})", weights=True)
        if done in self.rewind_points:
            self.save_rewind_point(done)

    def after_average_step(self, ema) -> None:
        """fairseq's --store-ema average stepped (after the update's optimizer step and pruning): its pruned
        positions zeroed, as in the model. Its copies are looked up each time: fairseq may replace them."""
        self.averages = ema_copies(ema, self.params, self.model)
        self.enforcer.apply_to_copies(self.averages)
        self._stats = None

    def check_ranks(self, when: str, weights: bool = False) -> None:
        check_ranks(self.mask, self.model, when, weights, logger.info if self.is_master else None)

    def save_rewind_point(self, update: int) -> None:
        """Once written, a rewind point is never overwritten (a resumed run passing update K again keeps it)."""
        path = rewind_point_path(self.cfg.save_dir, update)
        if not self.is_master:
            return
        if os.path.exists(path):
            logger.info(f"rewind point {path} exists already: kept as it is")
            return
        write_model_checkpoint(path, self.model.state_dict(), self.full_config(), update, self.epoch,
                               self.checkpoint_dict())
        logger.info(f"saved rewind point (weights after {update} updates) to {path}")

    def write_mask_files(self) -> None:
        mask = self.mask
        if mask is None or not self.is_master or not self.writes or mask is self.mask_written:
            return
        mask.save(os.path.join(self.cfg.save_dir, MASK_FILE), os.path.join(self.cfg.save_dir, REPORT_FILE))
        self.mask_written = mask

    # statistics for the criterion's log lines: measured on the updates fairseq logs (and in validation), once
    def stats(self, training: bool = True) -> Dict[str, int]:
        """masked_nonzero counts pruned positions holding a nonzero value in the model, in every fp32 master
        copy and in the --store-ema average, against the run's own mask. Two passes over the weights: measured
        only on updates whose log line fairseq prints (it prints the last value logged), so they cost nothing
        otherwise."""
        interval = int(getattr(self.cfg, "log_interval", 1) or 1)
        if training and (self.updates_done + 1) % interval != 0:
            return {}
        if self._stats is None:
            with torch.no_grad():
                zeros = sum(int((p == 0).sum()) for p in self.params.values())
            copies = self.masters + self.averages
            self._stats = {"slt_weights": sum(p.numel() for p in self.params.values()), "slt_zeros": zeros,
                           "slt_masked_nonzero": self.enforcer.masked_nonzero(copies), "slt_reports": 1}
        return dict(self._stats)

    # checkpointed state
    def checkpoint_dict(self) -> dict:
        self.write_mask_files()
        return {"identity": self.identity, "mask": self.mask.state_dict() if self.mask is not None else None,
                "schedule": {"initial_sparsity": self.initial_sparsity}}

    def load_checkpoint_dict(self, state: dict) -> None:
        """fairseq hands over the restored checkpoint's task state. The run decided what to resume when it
        was built (it reads its own checkpoint itself, so --reset-dataloader cannot drop its mask)."""
        if self.phase is Phase.NEW and state:
            logger.info("the restored checkpoint belongs to another pruning run: this run starts afresh "
                        "(its own mask and start weights)")
