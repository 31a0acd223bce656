"""Gradual magnitude pruning schedule (Zhu & Gupta, 2017), as used by the paper's MP."""
from .io import PruningError
from .magnitude import check_sparsity


def check_schedule(initial: float, final: float, start: int, end: int, frequency: int) -> None:
    check_sparsity(initial, "--prune-initial-sparsity")
    check_sparsity(final, "--prune-sparsity")
    if initial > final:
        raise PruningError(f"--prune-initial-sparsity {initial} is above the final --prune-sparsity {final}")
    if start < 0 or end <= start:
        raise PruningError(f"--prune-end ({end}) must be greater than --prune-start ({start}) >= 0")
    if frequency <= 0:
        raise PruningError(f"--prune-frequency must be a positive number of updates, got {frequency}")


def cubic_sparsity(t: int, initial: float, final: float, start: int, end: int) -> float:
    """s_t = s_T + min(0, (s_0 - s_T) (1 - (t - t_start) / (t_end - t_start))^3), s_0 before t_start."""
    if t <= start:
        return initial
    progress = min((t - start) / (end - start), 1.0)
    return final + min(0.0, (initial - final) * (1.0 - progress) ** 3)


def is_pruning_step(t: int, start: int, end: int, frequency: int) -> bool:
    """Pruning happens every ``frequency`` updates from ``start``, and always at ``end``."""
    return start <= t <= end and ((t - start) % frequency == 0 or t == end)
