"""The plugin's C++ kernels (``*.cpp`` beside this file): each compiled once per machine (C++ compiler ``$CXX``,
default g++, with -march=native and OpenMP) into ``$FAIRSEQ_SLT_CACHE`` (default ``~/.cache/fairseq_slt``), named
by a digest of its source, the compiler and the CPU, and loaded with ctypes. Where one cannot be built,
``load()`` returns None and logs why; its callers then use torch alone. Torch only, no fairseq.
"""
import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

logger = logging.getLogger(__name__)
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def _cpu() -> str:
    """The CPU's model and instruction sets (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    return "".join(next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags"))


def build(source: Path, compiler: str) -> Path:
    """The library compiled from ``source``, from the cache or built into it (atomically: a library in the cache
    is always whole)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    digest = hashlib.sha256("\0".join([source.read_text(), version, _cpu(), " ".join(FLAGS)]).encode()).hexdigest()
    cache = Path(os.environ.get("FAIRSEQ_SLT_CACHE") or Path.home() / ".cache" / "fairseq_slt")
    library = cache / f"{source.stem}-{digest[:16]}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=cache, suffix=".so.partial")
        os.close(handle)
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", partial, str(source)], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode:
                raise OSError(f"{compiler} failed: {(done.stderr.strip().splitlines() or ['?'])[0]}")
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        logger.info(f"built {source.name}: {library}")
    return library


def load(source: Path, declare: Callable[[ctypes.CDLL], None], without: str) -> Optional[ctypes.CDLL]:
    """``source``'s library with its functions' types declared, or None (logging ``without`` and why) where it
    cannot be built here."""
    compiler = os.environ.get("CXX") or "g++"
    try:
        lib = ctypes.CDLL(str(build(source, compiler)))
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning(f"{without} ({error})")
        return None
    declare(lib)
    return lib
