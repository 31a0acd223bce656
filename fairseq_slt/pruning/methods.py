"""The pruning methods, one entry each. No fairseq import.

Every question the package asks about a method (where its mask comes from, which rewind point it needs,
what it does to the kept weights, whether its sparsity grows during the run, which controls apply, how
results label it) is answered here: validation, the run, ``iterate``'s stage plan, ``results`` and the
help text read this table, and no other module compares method names. A new method is one entry here,
plus a mask or weight function when it needs one that does not exist yet.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from .io import UserError

RANDOM_MASK, REINIT, RANDOM_SIGNS = "prune_random_mask", "prune_reinit", "prune_clt_random_signs"


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    # where the mask comes from: None (a dense run), "checkpoint" (--prune-mask-from's weights, required) or
    # "schedule" (the run's own weights, pruned gradually; a --prune-mask-from is its starting mask)
    mask_source: Optional[str]
    # the rewind point its weights start from: "theta_0", "theta_k" (--prune-rewind-from, required), or None
    rewind_to: Optional[str]
    # the kept weights: "rewound" (as at the rewind point), "constant" (sign(θ_k)·sqrt(6/(n_in+n_out))),
    # "trained" (the run's own, from its initialisation)
    kept_weights: str
    controls: Tuple[str, ...] = ()  # the control options that apply to it

    def __str__(self) -> str:
        return self.name

    @property
    def prunes(self) -> bool:
        return self.mask_source is not None

    @property
    def gradual(self) -> bool:
        """Its sparsity grows during the run (the schedule options apply)."""
        return self.mask_source == "schedule"

    @property
    def from_checkpoints(self) -> bool:
        """Its mask and start weights must come from earlier runs (--prune-mask-from, --prune-rewind-from)."""
        return self.mask_source == "checkpoint"

    def check_rewind_update(self, update: int) -> None:
        """A rewind point's update number must be the one the method rewinds to."""
        if self.rewind_to == "theta_0" and update != 0:
            raise UserError(f"--prune-method {self.name} rewinds to update 0, but --prune-rewind-from is from update "
                            f"{update}")
        if self.rewind_to == "theta_k" and update == 0:
            raise UserError(f"--prune-method {self.name} rewinds to update k > 0; a checkpoint from update 0 is "
                            f"--prune-method {_rewinding_to('theta_0')}")


TABLE = {method.name: method for method in (
    Method("none", "dense training", None, None, "trained"),
    Method("lt", "lottery ticket: the mask on theta_0", "checkpoint", "theta_0", "rewound", (RANDOM_MASK, REINIT)),
    Method("slt", "stabilized lottery ticket: the mask on theta_k", "checkpoint", "theta_k", "rewound",
           (RANDOM_MASK, REINIT)),
    Method("clt", "constant lottery ticket: the mask on sign(theta_k)*sqrt(6/(n_in+n_out))", "checkpoint", "theta_k",
           "constant", (RANDOM_MASK, REINIT, RANDOM_SIGNS)),
    Method("mp", "gradual magnitude pruning (cubic schedule)", "schedule", None, "trained"),
)}
NAMES = tuple(TABLE)

# results' labels of chains: (this run's method, a method up its chain of mask sources) -> the paper's name
COMBINED = {("mp", "slt"): "slt-mp", ("slt", "mp"): "mp-slt"}
COMBINABLE = tuple(sorted({name for pair in COMBINED for name in pair if not TABLE[name].gradual}))  # with MP


def method(name: str) -> Method:
    if name not in TABLE:
        raise UserError(f"--prune-method must be one of {', '.join(NAMES)}, got {name!r}")
    return TABLE[name]


def _rewinding_to(point: str) -> str:
    return next(m.name for m in TABLE.values() if m.rewind_to == point)


def help_text() -> str:
    return "pruning method: " + "; ".join(f"{m.name} ({m.summary})" for m in TABLE.values())


def label(name: str, chain) -> str:
    """results' label of a run of method ``name`` whose mask sources' methods are ``chain`` (nearest first)."""
    if not TABLE.get(name, TABLE["none"]).prunes:
        return "dense"
    return next((combined for (own, ancestor), combined in COMBINED.items() if own == name and ancestor in chain), name)
