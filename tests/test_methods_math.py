"""MP schedule, CLT and controls, hand-computed (no fairseq)."""
import math

import pytest
import torch

from fairseq_slt.pruning import Mask, UserError, magnitude_mask
from fairseq_slt.pruning.reinit import clt_magnitude, constant_weights
from fairseq_slt.pruning.schedule import check_schedule, cubic_sparsity, is_pruning_step


def test_cubic_schedule_at_chosen_steps():
    # s_t = 0.9 + min(0, (0 - 0.9) (1 - (t - 100) / 400)^3)
    assert cubic_sparsity(50, 0.0, 0.9, 100, 500) == 0.0  # before t_start: s_0
    assert cubic_sparsity(100, 0.0, 0.9, 100, 500) == 0.0
    assert cubic_sparsity(300, 0.0, 0.9, 100, 500) == pytest.approx(0.9 - 0.9 * 0.5 ** 3)  # 0.7875
    assert cubic_sparsity(200, 0.0, 0.9, 100, 500) == pytest.approx(0.9 - 0.9 * 0.75 ** 3)  # 0.520312...
    assert cubic_sparsity(500, 0.0, 0.9, 100, 500) == 0.9
    assert cubic_sparsity(900, 0.0, 0.9, 100, 500) == 0.9  # holds after t_end
    # from an initial sparsity (SLT-MP): s_0 = 0.5
    assert cubic_sparsity(0, 0.5, 0.9, 0, 100) == 0.5
    assert cubic_sparsity(50, 0.5, 0.9, 0, 100) == pytest.approx(0.9 - 0.4 * 0.125)  # 0.85
    values = [cubic_sparsity(t, 0.1, 0.95, 10, 90) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # never unprunes


def test_pruning_steps_every_f_updates_and_at_the_end():
    steps = [t for t in range(0, 40) if is_pruning_step(t, 5, 27, 5)]
    assert steps == [5, 10, 15, 20, 25, 27]


@pytest.mark.parametrize("args, message", [
    ((0.6, 0.5, 0, 100, 10), "above the final"),
    ((0.0, 0.5, 100, 100, 10), "must be greater"),
    ((0.0, 0.5, 100, 50, 10), "must be greater"),
    ((0.0, 0.5, 0, 100, 0), "positive"),
    ((0.0, 1.0, 0, 100, 10), r"\[0, 1\)"),
])
def test_bad_schedules(args, message):
    with pytest.raises(UserError, match=message):
        check_schedule(*args)


def test_clt_constant_magnitudes_and_signs():
    weights = {"fc": torch.tensor([[0.3, -0.1, 0.0], [-2.0, 0.5, -0.7]]),  # (n_out=2, n_in=3)
               "emb": torch.tensor([[1.0, -1.0], [0.2, 0.1], [-3.0, 4.0], [0.0, 0.0]])}  # (vocab=4, dim=2)
    mask = Mask({"fc": torch.tensor([[True, True, True], [False, True, True]]),
                 "emb": torch.tensor([[True, False], [True, True], [False, True], [True, False]])})
    result = constant_weights(weights, mask)
    c = math.sqrt(6 / (3 + 2))
    assert clt_magnitude((2, 3)) == c and clt_magnitude((4, 2)) == math.sqrt(1.0)
    assert torch.allclose(result["fc"], torch.tensor([[c, -c, c], [0.0, c, -c]]))
    assert torch.equal(result["emb"], torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))


def test_clt_random_sign_control_is_seeded():
    torch.manual_seed(0)
    weights = {"w": torch.randn(40, 50)}
    mask = magnitude_mask(weights, 0.5)
    first, again, other = (constant_weights(weights, mask, seed)["w"] for seed in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first[mask["w"]].abs().unique().tolist() == pytest.approx([math.sqrt(6 / 90)])
    assert float(first[~mask["w"]].abs().max()) == 0.0
    agreement = float((torch.sign(first) == torch.sign(weights["w"]))[mask["w"]].float().mean())
    assert 0.4 < agreement < 0.6  # random, not the weights' signs


def test_masks_only_shrink_across_levels():
    torch.manual_seed(3)
    weights = {"a": torch.randn(30, 20), "b": torch.randn(10, 10)}
    previous = None
    for level in (0.1, 0.2, 0.5, 0.8, 0.9, 0.98):
        weights = {n: w + 0.5 * torch.randn_like(w) for n, w in weights.items()}  # retrained in between
        mask = magnitude_mask(weights, level, previous)
        if previous is not None:
            assert mask.within(previous) and not previous.within(mask)
        assert mask.sparsity() == pytest.approx(level, abs=0.01)
        previous = mask
