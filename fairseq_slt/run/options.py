"""A pruning run's options, declared once (``PruningOptions``: type, default, help, and whether and when
each is part of the run's identity), validated before anything is built, and the identity they give the run.

No fairseq import: the task's config inherits ``PruningOptions`` and passes itself in.
"""
import dataclasses
import os
from dataclasses import field
from typing import Callable, List, Optional

from ..pruning import UserError, check_sparsity
from ..pruning.magnitude import SCOPES
from ..pruning.methods import RANDOM_MASK, RANDOM_SIGNS, REINIT, TABLE, Method, help_text, method
from ..pruning.pattern import kept_per_group, parse_pattern, pattern_sparsity
from ..pruning.schedule import check_schedule

CONTROLS = (RANDOM_MASK, REINIT, RANDOM_SIGNS)
CPU_DDP_BACKENDS = ("legacy_ddp", "no_c10d")  # the others pass device_ids or need a GPU


@dataclasses.dataclass(frozen=True)
class Identity:
    """An option is part of the run's identity ``when`` its method ``prunes``, is ``gradual`` (mp), takes it as
    a ``control``, or (``given``) prunes and the option is set; ``always`` for every run. ``key``: its name in
    the identity (default: the option's field name); ``value``: how its value is recorded."""
    when: str
    key: Optional[str] = None
    value: Callable = lambda v: v

    def applies(self, name: str, chosen: Method, value) -> bool:
        return self.when == "always" or chosen.prunes and (
            self.when == "prunes" or (self.when == "gradual" and chosen.gradual) or
            (self.when == "control" and name in chosen.controls) or (self.when == "given" and bool(value)))


def _option(default, help: str, identity: Optional[Identity] = None):
    return field(default=default, metadata={"help": help, "identity": identity})


def _path(value):
    return os.path.abspath(value) if value else None


@dataclasses.dataclass
class PruningOptions:
    """Every ``--prune-*`` option of ``fairseq-train`` (the task's config inherits these fields)."""
    prune_method: str = _option("none", help_text(), Identity("always", "method", str))
    prune_sparsity: float = _option(
        0.0, "fraction of each weight matrix to prune, in [0, 1) (the final sparsity s_T for mp)", Identity("prunes"))
    prune_scope: str = _option(
        "layer", "layer: every weight matrix reaches the sparsity (paper); global: one threshold for all",
        Identity("prunes"))
    prune_pattern: Optional[str] = _option(
        None, "N:M (e.g. 2:4): in every group of M consecutive weights along a matrix's input dimension keep the N "
              "largest (--prune-sparsity must be 1-N/M; mp ramps the kept count down to N); default: unstructured",
        Identity("given"))  # only when given: the identities of unstructured runs stay as they were
    prune_params: Optional[str] = _option(
        None, "regex (re.search) narrowing the prunable weight matrices; default: all of dim >= 2", Identity("prunes"))
    prune_mask_from: Optional[str] = _option(
        None, "converged checkpoint whose weight magnitudes give the mask (its own mask stays pruned)",
        Identity("prunes", "mask_from", _path))
    prune_rewind_from: Optional[str] = _option(
        None, "checkpoint whose weights the pruned run starts from (theta_0 for lt, theta_k for slt)",
        Identity("prunes", "rewind_from", _path))
    prune_initial_sparsity: float = _option(
        0.0, "mp: sparsity s_0 at --prune-start (at least the sparsity of the --prune-mask-from mask)",
        Identity("gradual"))
    prune_start: int = _option(0, "mp: first pruning update t_start", Identity("gradual"))
    prune_end: int = _option(0, "mp: last pruning update t_end; the final sparsity holds after it", Identity("gradual"))
    prune_frequency: int = _option(100, "mp: prune every N updates between start and end", Identity("gradual"))
    prune_clt_random_signs: bool = _option(
        False, "control for clt: random signs (seeded by --prune-seed) instead of sign(theta_k)", Identity("control"))
    prune_random_mask: bool = _option(
        False, "control for lt/slt/clt: a random mask (seeded) with the same per-layer sparsity", Identity("control"))
    prune_reinit: bool = _option(
        False, "control for lt/slt/clt: start from a fresh fairseq initialisation (seeded) instead of the rewind "
               "point", Identity("control"))
    prune_seed: int = _option(1, "seed of the random controls", Identity("prunes"))
    prune_dense_gradients: bool = _option(
        False, "keep the gradients of pruned weights and zero only the weights after each step (faster: dense "
               "optimizer state); the same training with Adam or SGD and --clip-norm 0. Default: zeroed before "
               "clipping and the step, so they count in no norm or optimizer state", Identity("prunes", value=bool))
    save_rewind_points: Optional[str] = _option(
        None, "comma-separated updates, e.g. 0,400: save the weights before update 1 (0) and right after update K "
              "as checkpoint_rewind_K.pt in the save dir")
    sparse_inference: bool = _option(
        False, "fairseq-generate/interactive: run pruned linear layers (at least half zeros) as CSR matmuls (a "
               "row-major kernel built with the C++ compiler on first use, or torch's CSR product) where a "
               "timing on first use finds them faster than dense, per layer shape, input rows and thread count "
               "(CPU only)")


IDENTITY = {f.name: f.metadata["identity"] for f in dataclasses.fields(PruningOptions) if f.metadata["identity"]}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(PruningOptions)}
FIELD_OF_KEY = {(spec.key or name): name for name, spec in IDENTITY.items()}  # identity key -> its option
OTHER_INPUTS = {"seed": "--seed", "dictionaries": "the data's dictionaries"}  # identity keys that are not --prune-*


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
    if max_update > 0:
        check_rewind_points_within(points, max_update, f"--max-update {max_update}")
    if points and getattr(cfg, "no_save", False):
        raise UserError("--save-rewind-points writes checkpoints, --no-save none: drop one of them")
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
        raise UserError(f"--restore-file {restore} is not a file" if os.path.exists(restore) else
                        f"--restore-file not found: {restore} (fairseq would start from scratch)")
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
        if max_update > 0:
            check_schedule_within(cfg, max_update, f"--max-update {max_update}")
    if cfg.prune_rewind_from and getattr(cfg, "finetune_from_model", None):
        raise UserError(f"--finetune-from-model has no effect: the run starts from --prune-rewind-from's weights "
                        f"({cfg.prune_rewind_from}); drop one of them")
    for option, path in (("--prune-mask-from", cfg.prune_mask_from), ("--prune-rewind-from", cfg.prune_rewind_from)):
        if not path and chosen.from_checkpoints:
            raise UserError(f"--prune-method {cfg.prune_method} needs {option}")
        if check_files and path and not os.path.isfile(path):
            raise UserError(f"{option} checkpoint {path} is not a file" if os.path.exists(path) else
                            f"{option} checkpoint not found: {path}")


def epoch_updates(batches: int, epochs: int, update_freq: List[int], skip_remainder: bool) -> int:
    """The updates fairseq-train makes in ``epochs`` epochs of ``batches`` batches (a rank's): the batches of each
    update are grouped by the epoch's --update-freq, a last smaller group dropped with --skip-remainder-batch."""
    total = 0
    for epoch in range(1, epochs + 1):
        freq = int(update_freq[min(epoch, len(update_freq)) - 1])
        total += batches // freq if skip_remainder else -(-batches // freq)
    return total


def check_rewind_points_within(points: List[int], last_update: int, bound: str) -> None:
    """``bound``: what ends the run at ``last_update``, as the error names it (e.g. "--max-update 12")."""
    if points and points[-1] > last_update:
        raise UserError(f"rewind point {points[-1]} is beyond the run's {bound}")


def check_schedule_within(cfg, last_update: int, bound: str) -> None:
    """A gradual method's schedule must end by the run's last update (``bound`` as in check_rewind_points_within)."""
    if cfg.prune_end > last_update:
        raise UserError(f"--prune-end {cfg.prune_end} is beyond the run's {bound}: the run would stop before "
                        f"reaching --prune-sparsity {cfg.prune_sparsity}")


def check_epoch_bound(cfg, last_update: int, bound: str) -> None:
    """The run's updates end at ``last_update`` (``bound``: what sets it, e.g. --max-epoch with no --max-update):
    a schedule or a rewind point past it would never be reached."""
    bound = f"last update, {last_update} ({bound})"
    check_rewind_points_within(parse_rewind_points(cfg.save_rewind_points), last_update, bound)
    chosen = method(cfg.prune_method)
    if chosen.prunes and chosen.gradual:
        check_schedule_within(cfg, last_update, bound)


def option_of(key: str) -> str:
    """The command-line option (or input) a user changes to change an identity key."""
    if key in FIELD_OF_KEY:
        return "--" + FIELD_OF_KEY[key].replace("_", "-")
    return OTHER_INPUTS.get(key) or "--" + key.replace("_", "-")


def identity_default(key: str):
    """The value an identity key has when its option is not given (None for keys no option declares)."""
    name = FIELD_OF_KEY.get(key)
    return IDENTITY[name].value(DEFAULTS[name]) if name is not None else None


def run_identity(cfg, dictionaries: Optional[str]) -> dict:
    """What makes a run this run (recorded in its save dir and checkpoints; see run.folder): the options
    ``PruningOptions`` declares part of it, fairseq's --seed and the data's dictionaries."""
    chosen, identity = method(str(cfg.prune_method)), {}
    for name, spec in IDENTITY.items():
        value = getattr(cfg, name, None)
        if spec.applies(name, chosen, value):
            identity[spec.key or name] = spec.value(value)
    identity.update({"seed": cfg.seed, "dictionaries": dictionaries})
    return identity
