"""Pruning math and mask handling.  Nothing in this folder imports fairseq."""
from .enforce import MaskEnforcer, prunable_parameters
from .io import Failure, UserError, allow_fairseq_globals, atomic_save, atomic_write_json, atomic_write_stream, atomic_write_text, safe_load
from .magnitude import check_sparsity, magnitude_mask, masks_from_scores, pruned_count, random_mask
from .mask import Mask

__all__ = [
    "Mask", "MaskEnforcer", "UserError", "allow_fairseq_globals", "atomic_save", "atomic_write_json", "atomic_write_text",
    "check_sparsity", "magnitude_mask", "masks_from_scores", "prunable_parameters", "pruned_count",
    "random_mask", "safe_load",
]
