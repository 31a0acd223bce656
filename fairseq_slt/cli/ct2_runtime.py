"""What CTranslate2 runs on this machine, read from its own start-up log, and the setting to change where it
leaves speed unused.

CTranslate2 picks its instruction set and GEMM libraries by the CPU's vendor as well as by its features: on an
AMD EPYC with AVX-512 it runs AVX2 code and oneDNN's products (Intel MKL on Intel CPUs only), and
``CT2_FORCE_CPU_ISA=AVX512`` served int8 faster there (docs/deployment.md, "A second machine"). No fairseq.
"""
import os
import re
import subprocess
import sys
from typing import Dict, Mapping, Optional, Set

AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}  # what every AVX-512 server CPU has (Skylake-SP, Zen 4 on)
PROBE = ("import ctranslate2, logging, sys; ctranslate2.set_log_level(logging.INFO); "
         "ctranslate2.Translator(sys.argv[1], device='cpu', inter_threads=1, intra_threads=1)")
FIELDS = {"isa": r"Selected ISA: (\S+)", "int8_gemm": r"GEMM_S8 backend: (\S+)",
          "float32_gemm": r"SGEMM backend: (\S+)"}


def runtime(model_dir: str, env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """CTranslate2's choices for this model folder here, e.g. {'isa': 'AVX2', 'int8_gemm': 'DNNL', 'float32_gemm':
    'DNNL'}; '?' for what its log does not say (or where the probe could not run)."""
    try:
        log = subprocess.run([sys.executable, "-c", PROBE, model_dir], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **(env or {})}).stderr
    except (OSError, subprocess.SubprocessError):
        log = ""
    found = {key: re.search(pattern, log) for key, pattern in FIELDS.items()}
    return {key: match.group(1) if match else "?" for key, match in found.items()}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            line = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def isa_setting(chosen: str, flags: Set[str], environ: Mapping[str, str]) -> Dict[str, str]:
    """The environment to serve with where CTranslate2 chose less than the CPU's AVX-512 by itself (else none)."""
    if chosen in ("AVX512", "?") or "CT2_FORCE_CPU_ISA" in environ or not AVX512 <= flags:
        return {}
    return {"CT2_FORCE_CPU_ISA": "AVX512"}


def isa_advice(chosen: str, flags: Set[str], environ: Mapping[str, str]) -> Optional[str]:
    """A line of advice where CTranslate2 chose less than the CPU's AVX-512 by itself; None otherwise."""
    if not isa_setting(chosen, flags, environ):
        return None
    return (f"this CPU has AVX-512 but CTranslate2 chose {chosen}: serve with CT2_FORCE_CPU_ISA=AVX512 in the "
            "environment (faster on an AMD EPYC: docs/deployment.md)")
