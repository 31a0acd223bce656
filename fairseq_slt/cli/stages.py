"""The runs of an iterative-pruning schedule, in order (a plan, nothing is run here)."""
from dataclasses import dataclass, field
from typing import List, Optional

from ..pruning.methods import TABLE


@dataclass
class Stage:
    name: str  # also the run's folder under the work dir
    method: str
    sparsity: float
    options: List[str] = field(default_factory=list)
    mask_from: Optional[str] = None  # stage whose checkpoint_best.pt gives the mask
    rewind_from: Optional[str] = None  # stage whose rewind point gives the weights
    rewind_point: int = 0


def plan_stages(args, levels: List[float]) -> List[Stage]:
    k, method = args.rewind_k, args.method
    save_points = ["--save-rewind-points", ",".join(str(p) for p in sorted({0, k}))]
    mp_schedule = ["--prune-start", str(args.mp_start), "--prune-end", str(args.mp_end),
                   "--prune-frequency", str(args.mp_frequency)]
    rewind_source = (lambda previous: previous) if args.rewind_source == "previous" else (lambda previous: "dense")
    group = int(getattr(args, "pattern_group", 0) or 0)

    def sparsity(level: float) -> List[str]:  # N:M levels: the kept count of each group of --pattern-group
        pattern = ["--prune-pattern", f"{group - round(level * group)}:{group}"] if group else []
        return ["--prune-sparsity", str(level), *pattern]

    stages: List[Stage] = []
    needs_dense = args.combine != "mp-slt" or args.rewind_source == "dense"
    if needs_dense and not args.dense_dir:
        stages.append(Stage("dense", "none", 0.0, save_points))
    previous = "dense"

    if args.combine == "mp-slt":  # MP from scratch to s_i, then SLT levels above it
        s_i = args.intermediate
        stages.append(Stage(f"mp_{s_i:g}", "mp", s_i, [*sparsity(s_i), *mp_schedule, *save_points]))
        previous, slt_levels = stages[-1].name, [v for v in levels if v > s_i]
    elif args.combine == "slt-mp":  # SLT levels up to s_i, then MP from theta_k * m to the last level
        slt_levels = [v for v in levels if v < args.intermediate] + [args.intermediate]
    else:
        slt_levels = levels

    for level in slt_levels:
        stages.append(Stage(f"{method}_{level:g}", method, level, [*sparsity(level), *save_points],
                            mask_from=previous, rewind_from=rewind_source(previous),
                            rewind_point=0 if TABLE[method].rewind_to == "theta_0" else k))
        previous = stages[-1].name

    if args.combine == "slt-mp":
        target = levels[-1]
        stages.append(Stage(f"mp_{target:g}", "mp", target,
                            [*sparsity(target), "--prune-initial-sparsity", str(args.intermediate),
                             *mp_schedule, *save_points],
                            mask_from=previous, rewind_from=rewind_source(previous), rewind_point=k))
    return stages
