"""``Mask``: a validated mapping parameter name -> bool tensor (True = weight kept)."""
import hashlib
from collections.abc import Mapping
from typing import Dict, Iterator, Optional

import numpy as np
import torch

from .io import UserError, atomic_save, atomic_write_json, safe_load

MASK_FORMAT = "fairseq-slt-mask"
MASK_VERSION = 2  # 2: with a SHA-256 checksum of the packed bits; 1 (no checksum) is still read


class Mask(Mapping):
    def __init__(self, tensors: Mapping):
        self._tensors: Dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise UserError(f"mask entry {name!r} is not a named tensor")
            if tensor.dtype != torch.bool:
                raise UserError(f"mask entry {name} has dtype {tensor.dtype}, expected torch.bool")
            self._tensors[name] = tensor.detach().cpu()

    # Mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    @classmethod
    def ones_like(cls, weights: Mapping) -> "Mask":
        return cls({name: torch.ones(w.shape, dtype=torch.bool) for name, w in weights.items()})

    # counts
    def total(self) -> int:
        return sum(m.numel() for m in self._tensors.values())

    def pruned(self) -> int:
        return sum(int((~m).sum()) for m in self._tensors.values())

    def sparsity(self) -> float:
        total = self.total()
        return self.pruned() / total if total else 0.0

    def layer_sparsity(self) -> Dict[str, float]:
        return {n: float((~m).sum()) / m.numel() if m.numel() else 0.0 for n, m in self._tensors.items()}

    def report(self) -> dict:
        """Per-parameter and total sparsity, JSON-ready."""
        layers = {
            name: {"shape": list(m.shape), "total": m.numel(), "pruned": int((~m).sum()),
                   "sparsity": round(float((~m).sum()) / max(m.numel(), 1), 6)}
            for name, m in self._tensors.items()
        }
        return {"sparsity": round(self.sparsity(), 6), "pruned": self.pruned(), "total": self.total(), "layers": layers}

    # relations
    def check_matches(self, weights: Mapping, what: str = "model", exact: bool = False) -> None:
        """Raise UserError unless every mask entry names a weight of the same shape
        (and, with ``exact``, every weight has an entry)."""
        if exact and set(self._tensors) != set(weights):
            raise UserError(f"the mask covers other parameters than the {what}")
        for name, m in self._tensors.items():
            if name not in weights:
                raise UserError(f"mask entry {name} has no parameter in the {what}")
            if tuple(weights[name].shape) != tuple(m.shape):
                raise UserError(
                    f"mask entry {name} has shape {tuple(m.shape)} but the {what} has {tuple(weights[name].shape)}")

    def within(self, other: "Mask") -> bool:
        """True when every weight kept here is kept in ``other`` too (masks only shrink)."""
        return set(self) == set(other) and all(bool((m & ~other[n]).sum() == 0) for n, m in self.items())

    # persistence (bits are packed: 1 bit per weight on disk, with a checksum over names, shapes and bits)
    def state_dict(self) -> dict:
        packed = {}
        for name, m in self._tensors.items():
            bits = np.packbits(m.reshape(-1).numpy())
            packed[name] = {"shape": list(m.shape), "bits": torch.from_numpy(bits)}
        return {"format": MASK_FORMAT, "version": MASK_VERSION, "masks": packed, "sha256": _checksum(packed)}

    @classmethod
    def from_state_dict(cls, state, source: str = "mask") -> "Mask":
        if not isinstance(state, dict) or state.get("format") != MASK_FORMAT or not isinstance(state.get("masks"), dict):
            raise UserError(f"{source} is not a fairseq-slt mask")
        if state.get("version") not in (1, MASK_VERSION):
            raise UserError(f"{source} has mask version {state.get('version')}, expected {MASK_VERSION}")
        if state.get("version") == MASK_VERSION:
            try:
                intact = state.get("sha256") == _checksum(state["masks"])
            except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
                intact = False
            if not intact:
                raise UserError(f"{source} is corrupt: its checksum does not match its content")
        tensors = {}
        for name, entry in state["masks"].items():
            try:
                shape, bits = [int(d) for d in entry["shape"]], entry["bits"]
                count = int(np.prod(shape)) if shape else 1
                if bits.dtype != torch.uint8 or bits.numel() != (count + 7) // 8:
                    raise ValueError
                flat = np.unpackbits(bits.numpy(), count=count).astype(bool)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise UserError(f"{source} is corrupt: entry {name!r} is malformed") from None
            tensors[name] = torch.from_numpy(flat).reshape(shape)
        return cls(tensors)

    def checksum(self) -> str:
        """A short SHA-256 of names, shapes and bits: equal masks, equal checksums."""
        return self.state_dict()["sha256"][:16]

    def save(self, path: str, report_path: Optional[str] = None) -> None:
        atomic_save(self.state_dict(), path)
        if report_path:
            atomic_write_json(self.report(), report_path)

    @classmethod
    def load(cls, path: str) -> "Mask":
        return cls.from_state_dict(safe_load(path, "mask file"), source=f"mask file {path}")


def _checksum(packed: Mapping) -> str:
    """SHA-256 over every entry's name, shape and packed bits, in order."""
    digest = hashlib.sha256()
    for name, entry in packed.items():
        digest.update(f"{name}\0{list(entry['shape'])}\0".encode())
        digest.update(entry["bits"].numpy().tobytes())
    return digest.hexdigest()
