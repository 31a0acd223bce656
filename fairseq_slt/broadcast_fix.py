"""fairseq's multi-process resume under torch >= 2.6: let rank 0's broadcast of a loaded checkpoint unpickle.

Rank 0 loads a checkpoint (weights-only, from disk), turns its ``cfg`` into an omegaconf DictConfig and
broadcasts the whole state with ``torch.save``/``torch.load``; the other ranks' weights-only ``torch.load``
refuses DictConfig (and fairseq's own tensor placeholders), so every data-parallel resume dies on rank 1. The buffer is rank 0's in-memory state,
not a file, so exactly the containers omegaconf needs are allowed while it is received, and only then.
No fairseq file is changed: the module attribute fairseq calls is wrapped.
"""
import collections
import typing

import torch

_installed = False


def _omegaconf_globals():
    from omegaconf import DictConfig, ListConfig, base, nodes

    node_types = [getattr(nodes, name) for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode",
                                                    "BooleanNode", "EnumNode", "BytesNode", "PathNode")
                  if hasattr(nodes, name)]
    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, *node_types, typing.Any,
            collections.defaultdict, dict, list, int]


def install() -> None:
    global _installed
    if _installed:
        return
    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils.broadcast_object
    allowed = [*_omegaconf_globals(), distributed_utils._TensorPlaceholder]  # fairseq sends tensors apart

    def broadcast_object(obj, *args, **kwargs):
        with torch.serialization.safe_globals(allowed):
            return original(obj, *args, **kwargs)

    distributed_utils.broadcast_object = broadcast_object
    _installed = True
