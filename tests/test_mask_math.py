"""Mask math with hand-computed numbers (no fairseq)."""
import pytest
import torch

from fairseq_slt.pruning import Mask, UserError, magnitude_mask, prunable_parameters, pruned_count, random_mask
from fairseq_slt.pruning.select import keep_all_but_smallest, magnitude_bits


def t(*rows):
    """t([1, 2]) is a vector, t([1, 2], [3, 4]) a matrix."""
    return torch.tensor(rows if len(rows) > 1 else rows[0], dtype=torch.float32)


def test_layer_scope_prunes_smallest_magnitudes_per_matrix():
    weights = {"a": t([0.1, -0.5], [0.3, -0.2]), "b": t([4.0, -1.0, 2.0, 3.0])}
    mask = magnitude_mask(weights, 0.5)
    assert mask["a"].tolist() == [[False, True], [True, False]]  # 0.1 and -0.2 go
    assert mask["b"].tolist() == [True, False, False, True]  # -1 and 2 go
    assert mask.sparsity() == 0.5


def test_global_scope_uses_one_threshold_over_all_matrices():
    weights = {"a": t([1.0, 2.0], [3.0, 4.0]), "b": t([0.5, 5.0, 6.0, -0.1])}
    mask = magnitude_mask(weights, 0.5, scope="global")
    assert mask["a"].tolist() == [[False, False], [True, True]]
    assert mask["b"].tolist() == [False, True, True, False]
    assert mask.layer_sparsity() == {"a": 0.5, "b": 0.5}
    skewed = magnitude_mask({"a": t([1.0, 2.0, 3.0, 4.0]), "b": t([10.0, 20.0, 30.0, 40.0])}, 0.5, scope="global")
    assert skewed.layer_sparsity() == {"a": 1.0, "b": 0.0}


def test_ties_are_broken_by_position():
    assert magnitude_mask({"w": t([1.0, 1.0, 1.0, 1.0])}, 0.5)["w"].tolist() == [False, False, True, True]
    assert magnitude_mask({"w": t([2.0, 1.0, -1.0, 3.0])}, 0.25)["w"].tolist() == [True, False, True, True]
    zeros = magnitude_mask({"w": torch.zeros(3, 3)}, 0.3)["w"].reshape(-1).tolist()
    assert zeros == [False, False, False] + [True] * 6


def test_exact_count_per_matrix_to_one_weight():
    assert pruned_count(0.5, 7) == 4 and pruned_count(0.8, 10) == 8 and pruned_count(0.98, 1000) == 980
    torch.manual_seed(0)
    weights = {f"w{i}": torch.randn(shape) for i, shape in enumerate([(7, 3), (13, 11), (1, 5), (64, 33)])}
    for sparsity in (0.1, 0.5, 0.8, 0.85, 0.98):
        mask = magnitude_mask(weights, sparsity)
        for name, keep in mask.items():
            pruned = int((~keep).sum())
            assert abs(pruned - sparsity * keep.numel()) <= 0.5 + 1e-9, (name, sparsity, pruned)


def test_previous_mask_is_respected():
    weights = {"w": t([0.1, 5.0, 0.2, 4.0])}
    previous = Mask({"w": torch.tensor([True, False, True, True])})  # the large 5.0 was pruned before
    assert magnitude_mask(weights, 0.5, previous)["w"].tolist() == [False, False, True, True]
    assert magnitude_mask(weights, 0.25, previous)["w"].tolist() == [True, False, True, True]  # not unpruned
    assert magnitude_mask(weights, 0.0, previous)["w"].tolist() == [True, False, True, True]
    global_mask = magnitude_mask({"w": weights["w"], "v": t([3.0, 0.01])}, 0.5, Mask(
        {"w": previous["w"], "v": torch.tensor([True, True])}), scope="global")
    assert global_mask["w"].tolist() == [False, False, True, True] and global_mask["v"].tolist() == [True, False]


def test_matches_sorting_reference_on_random_weights_with_ties():
    torch.manual_seed(1)
    for trial in range(20):
        w = torch.randint(-6, 7, (50,)).float() / 4  # many ties, zeros and signs
        k = int(torch.randint(0, 51, ()))
        (keep,) = keep_all_but_smallest([magnitude_bits(w.abs())], k)
        order = sorted(range(50), key=lambda i: (abs(float(w[i])), i))
        assert set(torch.nonzero(~keep).view(-1).tolist()) == set(order[:k])
        # over several tensors: one order, tensor by tensor, then by position
        parts = [w[:20].abs(), w[20:].abs()]
        keeps = keep_all_but_smallest([magnitude_bits(p) for p in parts], k)
        assert set(torch.nonzero(~torch.cat(keeps)).view(-1).tolist()) == set(order[:k])


def test_bad_sparsity_and_scope():
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match=r"\[0, 1\)"):
            magnitude_mask({"w": t([1.0])}, bad)
    with pytest.raises(UserError, match="scope"):
        magnitude_mask({"w": t([1.0])}, 0.5, scope="row")


def test_tied_embeddings_are_one_prunable_parameter():
    embed = torch.nn.Embedding(10, 4)
    model = torch.nn.ModuleDict({"enc": embed, "dec": torch.nn.Linear(4, 10)})
    model["dec"].weight = embed.weight  # tied, as with --share-all-embeddings
    chosen = prunable_parameters(model.named_parameters())
    assert list(chosen) == ["enc.weight"]  # bias (dim 1) never; the tied weight once
    assert list(prunable_parameters(model.named_parameters(), r"^enc")) == ["enc.weight"]
    with pytest.raises(UserError, match="no prunable"):
        prunable_parameters(model.named_parameters(), "nothing")


def test_random_mask_control_is_seeded_and_keeps_per_layer_counts():
    torch.manual_seed(2)
    weights = {"a": torch.randn(20, 5), "b": torch.randn(30)}
    reference = magnitude_mask(weights, 0.7)
    first, again, other = (random_mask(weights, reference, seed) for seed in (3, 3, 4))
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
    assert first.layer_sparsity() == reference.layer_sparsity()
    assert any(not torch.equal(first[n], reference[n]) for n in first)
