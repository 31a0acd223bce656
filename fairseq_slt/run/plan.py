"""A new pruning run's start, computed once when the run is built (``prepare``): the starting mask and the
weights it starts from, from the mask source and the rewind point, every input checked first. No fairseq import."""
import dataclasses
import logging
from typing import Dict, Optional, Tuple

import torch

from ..checkpoints import Checkpoint
from ..pruning import Mask, UserError, magnitude_mask, random_mask
from ..pruning.methods import Method
from ..pruning.pattern import kept_per_group, pattern_mask, random_pattern_mask

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StartPlan:
    """What a new pruning run applies before its first update."""
    mask: Optional[Mask]  # None: from the weights the run starts with (mp without a mask source), at the start
    weights: Optional[Dict[str, torch.Tensor]]  # the rewind point's (or a fresh init's); None: the model's own
    sparsity: float  # the starting mask's sparsity


@dataclasses.dataclass(frozen=True)
class MaskMaker:
    """The run's mask functions: magnitude masks (per layer, global, or N:M) and the random-mask control."""
    scope: str
    pattern: Optional[Tuple[int, int]]  # (N, M), or None: unstructured
    seed: int

    def magnitude(self, weights, sparsity: float, previous: Optional[Mask]) -> Mask:
        if self.pattern is None:
            return magnitude_mask(weights, sparsity, previous, self.scope)
        m = self.pattern[1]
        return pattern_mask({n: w.detach().abs() for n, w in weights.items()}, kept_per_group(sparsity, m), m, previous)

    def random_control(self, weights, sparsity: float, like: Mask, previous: Optional[Mask]) -> Mask:
        """As many kept weights as ``like`` in each matrix (N:M: in each group), at random."""
        if self.pattern is None:
            return random_mask(weights, like, self.seed, previous)
        m = self.pattern[1]
        return random_pattern_mask(weights, kept_per_group(sparsity, m), m, self.seed, previous)


def load_checked(path: Optional[str], option: str, model_state, dictionaries: Optional[str],
                 params) -> Optional[Checkpoint]:
    """The checkpoint an option names, checked against the model, the data's dictionaries and for NaN weights."""
    if not path:
        return None
    checkpoint = Checkpoint(path, f"{option} checkpoint")
    checkpoint.check_matches(model_state, dictionaries)
    broken = next((name for name in params if not bool(torch.isfinite(checkpoint.model[name]).all())), None)
    if broken is not None:  # a magnitude mask of NaN weights is arbitrary; a run from them learns nothing
        raise UserError(f"{option} checkpoint {path} holds NaN or infinite weights in {broken}")
    return checkpoint


def prepare(cfg, chosen: Method, params, model_state, masks: MaskMaker, dictionaries: Optional[str],
            fresh_init: Optional[Dict[str, torch.Tensor]]) -> StartPlan:
    """``params``: the prunable weight matrices; ``fresh_init``: a seeded initialisation (--prune-reinit)."""
    source = load_checked(cfg.prune_mask_from, "--prune-mask-from", model_state, dictionaries, params)
    rewind = load_checked(cfg.prune_rewind_from, "--prune-rewind-from", model_state, dictionaries, params)
    if rewind is not None:
        if rewind.num_updates is None:
            raise UserError(f"--prune-rewind-from checkpoint {rewind.path} records no update number (its optimizer "
                            "history is empty): theta_0 and theta_k cannot be told apart; use a checkpoint "
                            "fairseq-train saved (--save-rewind-points)")
        chosen.check_rewind_update(rewind.num_updates)
    previous = source.mask() if source is not None else None
    if previous is not None:
        previous.check_matches(params, f"weight matrices --prune-params selects ({source.path})", exact=True)
    sparsity = cfg.prune_sparsity
    if chosen.gradual:  # the starting mask: s_0, at least the source mask's sparsity
        sparsity = max(cfg.prune_initial_sparsity, previous.sparsity() if previous is not None else 0.0)
        if sparsity > cfg.prune_sparsity:
            raise UserError(f"the starting mask's sparsity {sparsity:.4f} is above the final --prune-sparsity "
                            f"{cfg.prune_sparsity}")
    if source is None and rewind is None:  # mp from the weights the run starts with, known only at start()
        logger.info(f"{chosen}: starting mask at sparsity {sparsity:.4f} from the weights the run starts with")
        return StartPlan(None, None, sparsity)
    start_weights = rewind.model if rewind is not None else model_state
    scored = source.model if source is not None else start_weights
    weights = {name: scored[name] for name in params}
    mask = masks.magnitude(weights, sparsity, previous)
    if cfg.prune_random_mask:
        mask = masks.random_control(weights, sparsity, mask, previous)
    start = fresh_init if cfg.prune_reinit else start_weights
    logger.info(f"{chosen}: starting mask at sparsity {mask.sparsity():.4f}"
                f"{' (random)' if cfg.prune_random_mask else ''} from {source.path if source else 'the start weights'}; "
                f"weights from {'a fresh init' if cfg.prune_reinit else rewind.path if rewind else 'the model init'}")
    return StartPlan(mask, {name: start[name] for name in model_state}, sparsity)
