"""Re-initialising kept weights: CLT's constant magnitudes and its random-sign control."""
import math
from typing import Dict, Mapping, Optional

import torch

from .mask import Mask


def clt_magnitude(shape) -> float:
    """sqrt(6 / (n_in + n_out)): the Xavier-uniform bound of a (n_out, n_in) matrix.

    Embeddings (vocab, dim) are treated the same way, as a matrix with n_in + n_out = vocab + dim:
    with shared embeddings the same matrix is the output projection, whose Xavier bound this is.
    """
    n_out, n_in = int(shape[0]), int(math.prod(shape[1:]))
    return math.sqrt(6.0 / (n_in + n_out))


def constant_weights(
    weights: Mapping[str, torch.Tensor], mask: Mask, random_signs_seed: Optional[int] = None
) -> Dict[str, torch.Tensor]:
    """Every kept weight := sign * sqrt(6/(n_in+n_out)); pruned weights 0.

    The sign is that of ``weights`` (CLT), or uniformly random when ``random_signs_seed`` is given
    (the paper's control).  A zero weight has no sign; it gets +.
    """
    generator = torch.Generator().manual_seed(int(random_signs_seed)) if random_signs_seed is not None else None
    result = {}
    for name, keep in mask.items():
        weight = weights[name].detach()
        if generator is None:
            sign = torch.where(weight < 0, -1.0, 1.0)
        else:
            sign = torch.randint(0, 2, weight.shape, generator=generator).float() * 2 - 1
        result[name] = torch.where(keep, sign * clt_magnitude(weight.shape), 0.0).to(weight.dtype)  # +0.0, never -0.0
    return result
