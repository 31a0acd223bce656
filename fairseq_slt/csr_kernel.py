"""The row-major CSR kernel of ``csr_kernel.cpp``: nn.Linear's product with a CSR weight, without the two
transposing copies torch's CSR product needs.

It is compiled once per machine (C++ compiler ``$CXX``, default g++, with -march=native and OpenMP) into
``$FAIRSEQ_SLT_CACHE`` (default ``~/.cache/fairseq_slt``), named by a digest of the source, the compiler and the
CPU, and loaded with ctypes. Where it cannot be built, ``load()`` returns None and logs why, once; sparse
inference then uses torch's CSR product alone. Torch only, no fairseq.
"""
import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csr_kernel.cpp")
BLOCKS = (8, 16, 32, 64)  # rows per block the kernel is built for
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_state = {}  # "lib": the loaded library or None, once load() has run
_scratch = threading.local()  # per Python thread: ctypes calls release the GIL


def _cpu() -> str:
    """The CPU's model and instruction sets (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    return "".join(next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags"))


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), version, _cpu(), " ".join(FLAGS)]).encode()).hexdigest()
    cache = Path(os.environ.get("FAIRSEQ_SLT_CACHE") or Path.home() / ".cache" / "fairseq_slt")
    library = cache / f"csr_kernel-{digest[:16]}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=cache, suffix=".so.partial")
        os.close(handle)
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE)], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode:
                raise OSError(f"{compiler} failed: {(done.stderr.strip().splitlines() or ['?'])[0]}")
            os.replace(partial, library)  # atomic: a library in the cache is always whole
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        logger.info(f"built the row-major CSR kernel: {library}")
    return library


def load() -> Optional[ctypes.CDLL]:
    """The kernel's library (built on first use), or None where it cannot be built here."""
    if "lib" not in _state:
        compiler = os.environ.get("CXX") or "g++"
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
        except (OSError, subprocess.SubprocessError) as error:
            logger.warning(f"sparse inference uses torch's CSR product only: no row-major kernel ({error})")
            lib = None
        else:
            pointer, size = ctypes.c_void_p, ctypes.c_int64
            lib.csr_linear.argtypes = [pointer, size, size, size, pointer, pointer, pointer, pointer, pointer,
                                       ctypes.c_int, ctypes.c_int, pointer]
            lib.csr_linear.restype = ctypes.c_int
        _state["lib"] = lib
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
