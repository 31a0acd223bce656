"""The row-major CSR kernel of ``csr_kernel.cpp``: nn.Linear's product with a CSR weight, without the two
transposing copies torch's CSR product needs.

It is built once per machine and loaded by ``native``. Where it cannot be built, ``load()`` returns None and
logs why, once; sparse inference then uses torch's CSR product alone. Torch only, no fairseq.
"""
import ctypes
import threading
from pathlib import Path
from typing import Optional

import torch

from . import native

SOURCE = Path(__file__).with_name("csr_kernel.cpp")
BLOCKS = (8, 16, 32, 64)  # rows per block the kernel is built for
_state = {}  # "lib": the loaded library or None, once load() has run
_scratch = threading.local()  # per Python thread: ctypes calls release the GIL


def _declare(lib: ctypes.CDLL) -> None:
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.csr_linear.argtypes = [pointer, size, size, size, pointer, pointer, pointer, pointer, pointer,
                               ctypes.c_int, ctypes.c_int, pointer]
    lib.csr_linear.restype = ctypes.c_int


def load() -> Optional[ctypes.CDLL]:
    """The kernel's library (built on first use), or None where it cannot be built here."""
    if "lib" not in _state:
        _state["lib"] = native.load(SOURCE, _declare,
                                    "sparse inference uses torch's CSR product only: no row-major kernel")
    return _state["lib"]


class Operand:
    """A CSR weight (int32 crow/col, float32 values, contiguous) prepared for the kernel: its parts and their
    addresses are taken once, not on every call (about 1 us per part taken; a decoding step's product of 5 rows
    by a 512x512 matrix at 90 % zeros takes about 20 us)."""

    def __init__(self, csr: torch.Tensor, lib: ctypes.CDLL):
        self.lib = lib
        self.out_features, self.in_features = csr.shape
        self.parts = csr.crow_indices(), csr.col_indices(), csr.values()  # kept alive for the addresses below
        self.pointers = tuple(part.data_ptr() for part in self.parts)

    @classmethod
    def of(cls, csr: torch.Tensor) -> Optional["Operand"]:
        """The kernel's operand for this CSR weight, or None where the kernel cannot take it: not float32, indices
        not int32, or the kernel not built here."""
        if csr.values().dtype != torch.float32 or csr.crow_indices().dtype != torch.int32:
            return None
        lib = load()
        return None if lib is None else cls(csr, lib)

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor], block: int, threads: int) -> torch.Tensor:
        """x (... x in, float32) times the weight's transpose, plus bias (float32, contiguous): (... x out).
        ``block``: one of BLOCKS. The output is made in its final shape (a decoding step's product of 5 rows takes
        a few us: reshaping x and viewing the result cost 3 us more, most of it a view by a torch.Size)."""
        if block not in BLOCKS:
            raise RuntimeError(f"the row-major CSR kernel has no {block}-row blocks")
        x = x.contiguous()
        rows = x.numel() // self.in_features
        needed = max(-(-rows // block), threads) * block * self.in_features
        scratch = getattr(_scratch, "buffer", None)
        if scratch is None or scratch.numel() < needed:
            scratch = _scratch.buffer = torch.empty(needed)
        y = torch.empty(*x.shape[:-1], self.out_features)  # 0.4 us less than a tuple built from x.shape
        crow, col, values = self.pointers
        self.lib.csr_linear(x.data_ptr(), rows, self.in_features, self.out_features, crow, col, values,
                            None if bias is None else bias.data_ptr(), y.data_ptr(), threads, block,
                            scratch.data_ptr())
        return y
