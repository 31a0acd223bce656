"""Gradual magnitude pruning schedule (Zhu & Gupta, 2017), as used by the paper's MP."""
from dataclasses import dataclass
from typing import Optional

from .io import UserError
from .magnitude import check_sparsity


TRAINER_OPTIONS = ("--prune-initial-sparsity", "--prune-sparsity", "--prune-start", "--prune-end", "--prune-frequency")


def check_schedule(initial: float, final: float, start: int, end: int, frequency: int,
                   options=TRAINER_OPTIONS) -> None:
    """``options``: the names the user gave these five values under (fairseq-train's by default)."""
    s0, s_final, o_start, o_end, o_frequency = options
    check_sparsity(initial, s0)
    check_sparsity(final, s_final)
    if initial > final:
        raise UserError(f"{s0} {initial} is above the final {s_final} {final}")
    if start < 0 or end <= start:
        raise UserError(f"{o_end} ({end}) must be greater than {o_start} ({start}) >= 0")
    if frequency <= 0:
        raise UserError(f"{o_frequency} must be a positive number of updates, got {frequency}")


def cubic_sparsity(t: int, initial: float, final: float, start: int, end: int) -> float:
    """s_t = s_T + min(0, (s_0 - s_T) (1 - (t - t_start) / (t_end - t_start))^3), s_0 before t_start."""
    if t <= start:
        return initial
    progress = min((t - start) / (end - start), 1.0)
    return final + min(0.0, (initial - final) * (1.0 - progress) ** 3)


def is_pruning_step(t: int, start: int, end: int, frequency: int) -> bool:
    """Pruning happens every ``frequency`` updates from ``start``, and always at ``end``."""
    return start <= t <= end and ((t - start) % frequency == 0 or t == end)


@dataclass(frozen=True)
class Schedule:
    """How a run's sparsity grows: not at all (``gradual`` False: the mask stays as it started), or from
    ``initial`` to ``final`` on the cubic schedule, pruning every ``frequency`` updates from ``start`` to ``end``."""
    gradual: bool
    initial: float = 0.0
    final: float = 0.0
    start: int = 0
    end: int = 0
    frequency: int = 1

    def sparsity_at(self, update: int) -> float:
        return cubic_sparsity(update, self.initial, self.final, self.start, self.end) if self.gradual else self.final

    def reached(self, update: int) -> bool:
        """Whether the final sparsity holds after ``update`` updates (always, for a mask that does not grow)."""
        return not self.gradual or update >= self.end

    def target_at(self, update: int) -> Optional[float]:
        """The sparsity to prune to after ``update`` updates; None where the mask stays as it is."""
        if not self.gradual or not is_pruning_step(update, self.start, self.end, self.frequency):
            return None
        return self.sparsity_at(update)
