"""One-token attention the lean way: fairseq's ``MultiheadAttention`` operations for a decoding step, in fairseq's
order, on fairseq's cache entries, without its general-purpose branches (used by ``lean_decoder_step``). Torch
only: the attention module is read for its projections, head shapes and cache key.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn


def state_key(attention: nn.Module) -> str:
    return f"{attention._incremental_state_id}.attn_state"  # fairseq's _get_input_buffer key


class LeanAttention:
    """What a lean step reads of one fairseq attention module, looked up once per generation: the projections'
    forwards (no hooks: checked), the head shapes and the cache key."""
    __slots__ = ("q", "k", "v", "out", "heads", "dim", "width", "scaling", "key")

    def __init__(self, attention: nn.Module):
        self.q, self.k = attention.q_proj.forward, attention.k_proj.forward
        self.v, self.out = attention.v_proj.forward, attention.out_proj.forward
        self.heads, self.dim, self.width = attention.num_heads, attention.head_dim, attention.embed_dim
        self.scaling, self.key = attention.scaling, state_key(attention)

    def split(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """(1 or T, rows, C) -> (rows * heads, 1 or T, head_dim), as fairseq's attention reshapes q, k and v."""
        return x.contiguous().view(-1, rows * self.heads, self.dim).transpose(0, 1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int, padding: Optional[torch.Tensor]):
        """fairseq's scores, padding, softmax and weighted sum for one query row: (output, float weights). Where
        the keys are fewer than the rows (beamable encoder attention: one a sentence, not one a hypothesis),
        fairseq's einsums over each sentence's hypotheses instead of its bmms."""
        sentences = k.size(0) // self.heads
        if sentences == rows:
            weights = torch.bmm(q, k.transpose(1, 2))
        else:
            weights = torch.einsum("bxhtd,bhsd->bxhts", q.view((sentences, -1, self.heads) + q.size()[1:]),
                                   k.view((sentences, self.heads) + k.size()[1:]))
            weights = weights.reshape((-1,) + weights.size()[-2:])
        if padding is not None:
            source = k.size(1)
            weights = weights.view(rows, self.heads, 1, source).view(padding.size(0), -1, self.heads, 1, source)
            weights = weights.masked_fill(padding.unsqueeze(1).unsqueeze(2).unsqueeze(3).to(torch.bool),
                                          float("-inf"))
            weights = weights.view(rows * self.heads, 1, source)
        weights_float = F.softmax(weights, dim=-1, dtype=torch.float32)
        probabilities = weights_float.type_as(weights)
        if sentences == rows:
            output = torch.bmm(probabilities, v)
        else:
            output = torch.einsum("bxhts,bhsd->bxhtd",
                                  probabilities.view((sentences, -1, self.heads) + probabilities.size()[1:]),
                                  v.view((sentences, self.heads) + v.size()[1:]))
            output = output.reshape((-1,) + output.size()[-2:])
        output = output.transpose(0, 1).contiguous().view(1, rows, self.width)
        return self.out(output), weights_float

    def self_attend(self, x: torch.Tensor, saved: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        rows = x.size(1)
        q, k, v = self.q(x), self.k(x), self.v(x)
        q *= self.scaling
        q, k, v = self.split(q, rows), self.split(k, rows), self.split(v, rows)
        if "prev_key" in saved:
            k = torch.cat([saved["prev_key"].view(rows * self.heads, -1, self.dim), k], dim=1)
            v = torch.cat([saved["prev_value"].view(rows * self.heads, -1, self.dim), v], dim=1)
        saved["prev_key"] = k.view(rows, self.heads, -1, self.dim)
        saved["prev_value"] = v.view(rows, self.heads, -1, self.dim)
        saved["prev_key_padding_mask"] = None
        return self.attend(q, k, v, rows, None)[0]

    def encoder_attend(self, x: torch.Tensor, saved: Dict[str, Optional[torch.Tensor]], need_weights: bool,
                       per_head: bool):
        rows = x.size(1)
        q = self.q(x)
        q *= self.scaling
        sentences = saved["prev_key"].size(0)  # rows, or fewer under the beamable path (one a sentence)
        k = saved["prev_key"].view(sentences * self.heads, -1, self.dim)
        v = saved["prev_value"].view(sentences * self.heads, -1, self.dim)
        output, weights = self.attend(self.split(q, rows), k, v, rows, saved["prev_key_padding_mask"])
        if not (need_weights or per_head):
            return output, None
        weights = weights.view(rows, self.heads, 1, k.size(1)).transpose(1, 0)
        return output, (weights if per_head else weights.mean(dim=0))
