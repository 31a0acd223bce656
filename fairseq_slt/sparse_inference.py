"""Sparse inference on CPU: pruned linear layers as CSR matmuls where that is faster than dense.

``sparsify(model)`` replaces every ``nn.Linear`` whose weight is mostly zeros by a ``SparseLinear``
that keeps the same weight and bias parameters (state_dict keys and code reading ``.weight`` are
unchanged) plus a CSR copy of the weight.  A sparse product runs one of two ways (a ``Way``): the row-major
kernel of ``csr_kernel`` (in blocks of 8 to 64 rows, on one thread or all of torch's) or torch's CSR product
(in blocks of 64 or 256 rows, with the transposing copies it needs). Which is faster, and whether either beats
dense, depends on the layer's shape and density, the number of input rows and the thread count, so a ``Plan``
measures it: the first time a (shape, density, rows bucket, threads) combination is met it times dense and
every way on an input of that size and remembers the fastest.  Rows are bucketed by powers of two.

A layer timed alone does not see what a whole step costs (caches, the thread pools of two kernels, the
copies around them), so the layers' choices are then checked by whole steps (``step_trial.StepTrial``, which
``sparsify`` wraps around fairseq's encoder and decoder). Torch only, no fairseq.
"""
import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import csr_kernel

if TYPE_CHECKING:  # step_trial imports this module
    from .step_trial import StepTrial

logger = logging.getLogger(__name__)
MIN_SPARSITY = 0.5  # measured here: CSR at 0.45-0.6x dense speed at 50 % zeros, about even at 70 %; below: not tried
# rows per torch CSR product, the faster timed per layer size: on thousands of rows at once CSR fell below dense
# speed (12800 rows, 512x512 at 90 %: 74 ms, 28 ms in blocks of 256, dense 60); on a 2-core Xeon with AVX-512 and
# AMX, blocks of 64 were up to 24 % faster than 256 at 320 and 1000 rows for 512x512 to 4008x512 (csr_layout.py)
CHUNKS = (64, 256)
MARGIN = 0.9  # sparse is chosen only when it takes under 90 % of dense's time (noise stays dense)
# larger rows buckets are timed on this many rows: every way works in blocks of at most 256 rows, so its time per
# row no longer depends on the count there (and timing the encoder's thousands of rows took seconds)
SAMPLE_ROWS = 512
# each way is timed at least ``repeats`` times and until its runs took MIN_SECONDS: 2 ms had the demo-size model's
# timing take 0.15-0.17 s at batch 1 (a few % of a 200-sentence run) and 0.5 ms 0.04 s, every sparse-or-dense choice
# the same (15/15 keys, 1 and 2 threads; base-size at batch 64: 31/31, 1.39 -> 1.29 s, where big products dominate)
MIN_SECONDS = 0.0005
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")  # fairseq MultiheadAttention's linear layers
# the weights a CSR product runs on CPU: the row-major kernel takes float32, torch's (MKL) float32 and float64;
# neither has float16 or bfloat16 ("addmm_out_sparse_csr_impl_mkl" not implemented for 'Half')
CSR_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Way:
    """One way to run a sparse product: ``kernel`` "rows" (csr_kernel, blocks of ``rows`` rows on ``threads``
    threads) or "torch" (torch's CSR product, ``rows`` rows at a time, on torch's threads)."""
    kernel: str
    rows: int
    threads: int = 0

    def __str__(self) -> str:
        if self.kernel == "torch":
            return f"torch CSR in blocks of {self.rows} rows"
        return f"row-major kernel in blocks of {self.rows} rows on {self.threads} thread(s)"


class Plan:
    """Dense-or-sparse decisions per (out, in, density %, rows bucket, threads), measured on first use: dense, or
    the fastest ``Way`` timed."""

    def __init__(self, min_seconds: float = MIN_SECONDS, repeats: int = 3, always: Optional[bool] = None,
                 chunks: Tuple[int, ...] = CHUNKS, blocks: Tuple[int, ...] = csr_kernel.BLOCKS):
        """``always``: True/False forces sparse (the first way of ``ways``)/dense everywhere (for comparisons),
        None times it; ``chunks``/``blocks``: the torch CSR blockings/row-major kernel blockings timed (another
        set, or () for none of that kernel: for comparisons)."""
        self.min_seconds, self.repeats, self.always = min_seconds, repeats, always
        self.chunks, self.blocks = chunks, blocks
        # key -> (the way chosen, None: dense; dense seconds; the fastest way's seconds)
        self.decisions: Dict[Tuple[int, int, int, int, int], Tuple[Optional[Way], float, float]] = {}
        self.calibration_seconds = 0.0
        self.calls = {"sparse": 0, "dense": 0}
        self.all_dense = False  # set by StepTrial around a step that runs dense (SparseLinear.forward reads it)

    def ways(self, layer: "SparseLinear", bucket: int) -> List[Way]:
        """The ways timed for this layer at this rows bucket: the row-major kernel first (where it is built and
        takes the layer), blocks no larger than the bucket needs, on all threads and, for up to 16 rows (where
        sharing the work can cost more than it saves), on one."""
        threads = torch.get_num_threads()
        counts = sorted({1, threads}) if bucket <= 16 else [threads]
        kernel = [Way("rows", block, count) for block in self.blocks if block < 2 * max(bucket, 8)
                  for count in counts] if layer.takes_kernel() else []
        return kernel + [Way("torch", chunk) for chunk in sorted({min(chunk, bucket) for chunk in self.chunks})]

    def way_for(self, layer: "SparseLinear", rows: int) -> Optional[Way]:
        """How this call runs; None: dense."""
        if self.always is False:
            chosen = None
        else:
            chosen = self._decide(layer, rows) if self.always is None else self.ways(layer, rows_bucket(rows))[0]
        self.calls["dense" if chosen is None else "sparse"] += 1
        return chosen

    def _decide(self, layer: "SparseLinear", rows: int) -> Optional[Way]:
        bucket = rows_bucket(rows)
        key = layer.plan_key + (bucket, torch.get_num_threads())
        if key not in self.decisions:
            started = time.perf_counter()
            # drawn from a generator of its own: torch's global one is --sampling's (--seed), which a draw here
            # would move, so that sampled translations changed with --sparse-inference
            sample = torch.randn(min(bucket, SAMPLE_ROWS), layer.in_features, dtype=layer.weight.dtype,
                                 generator=torch.Generator().manual_seed(0))
            dense = self._time(lambda: layer.dense(sample))
            sparse = {way: self._time(lambda: layer.sparse(sample, way)) for way in self.ways(layer, bucket)}
            way = min(sparse, key=sparse.get)
            self.decisions[key] = (way if sparse[way] < MARGIN * dense else None, dense, sparse[way])
            self.calibration_seconds += time.perf_counter() - started
        return self.decisions[key][0]

    def _time(self, run) -> float:
        with torch.no_grad():
            run()  # warm-up
            best, spent, count = float("inf"), 0.0, 0
            while count < self.repeats or spent < self.min_seconds:
                started = time.perf_counter()
                run()
                elapsed = time.perf_counter() - started
                best, spent, count = min(best, elapsed), spent + elapsed, count + 1
        return best

    def summary(self) -> List[str]:
        """How many calls ran sparse, then one line per timed (shape, rows bucket, threads): the choice and ratio."""
        total = sum(self.calls.values())
        lines = [f"{self.calls['sparse']} of {total} linear-layer calls ran sparse; timing took "
                 f"{self.calibration_seconds:.2f} s"] if total else []
        for (out, inp, density, bucket, threads), (way, dense_s, sparse_s) in sorted(
                self.decisions.items(), key=lambda item: item[0]):
            lines.append(f"{out}x{inp} at {100 - density} % zeros, {threads} thread(s), rows <= {bucket}: "
                         f"{'dense' if way is None else way} (the fastest sparse way at {dense_s / sparse_s:.2f}x "
                         f"dense speed)")
        return lines


def rows_bucket(rows: int) -> int:
    return 1 << max(rows - 1, 0).bit_length()


class SparseLinear(nn.Module):
    """``nn.Linear`` with a CSR copy of its weight, used where the plan finds it faster."""

    def __init__(self, linear: nn.Linear, plan: Plan):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same parameters: state_dict unchanged
        weight = linear.weight.detach()
        self.csr = csr_of(weight)
        self.density = self.csr.values().numel() / max(weight.numel(), 1)
        self.plan_key = (self.out_features, self.in_features, round(100 * self.density))  # what Plan decides by
        self.plan = plan
        self.operand = csr_kernel.Operand.of(self.csr)  # None: torch's CSR product only
        self.train(linear.training)  # in the mode of the layer it replaces (a model in eval mode stays so)

    def takes_kernel(self) -> bool:
        """Whether the row-major kernel can run this layer: float32, 32-bit indices, and the kernel built here."""
        return self.operand is not None

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def sparse(self, x: torch.Tensor, way: Way) -> torch.Tensor:
        """The CSR product, the given way."""
        if way.kernel == "rows":
            return self.operand.linear(x, self.bias, way.rows, way.threads)
        flat = x.reshape(-1, self.in_features)  # torch's product takes x^T and returns (out x rows): two copies
        out = torch.empty(flat.shape[0], self.out_features, dtype=flat.dtype)
        for start in range(0, flat.shape[0], way.rows):
            block = flat[start:start + way.rows].t()
            if self.bias is None:
                result = torch.mm(self.csr, block)
            else:
                result = torch.addmm(self.bias.unsqueeze(1), self.csr, block)
            out[start:start + way.rows] = result.t()
        return out.view(tuple(x.shape[:-1]) + (self.out_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan.all_dense:  # the step runs dense (StepTrial): as little on top of nn.Linear as can be
            self.plan.calls["dense"] += 1
            return self.dense(x)
        if torch.is_grad_enabled():
            return self.dense(x)
        rows = x.numel() // self.in_features
        way = self.plan.way_for(self, rows) if rows else None
        return self.dense(x) if way is None else self.sparse(x, way)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.3f}"


def csr_of(weight: torch.Tensor) -> torch.Tensor:
    """The weight matrix as CSR, with int32 indices where they fit (what csr_kernel takes)."""
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notes, on every layer
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.to_sparse_csr()
        index = torch.int32 if csr.values().numel() < 2 ** 31 else torch.int64
        return torch.sparse_csr_tensor(csr.crow_indices().to(index), csr.col_indices().to(index), csr.values(),
                                       size=csr.shape)


def sparsify(model: nn.Module, plan: Plan, min_sparsity: float = MIN_SPARSITY,
             trial: Optional["StepTrial"] = None, prefix: str = "") -> List[str]:
    """Replace the model's mostly-zero ``nn.Linear`` layers (in place; CPU, float32 or float64 weights: the others
    stay as they are); returns the replaced names.
    ``trial`` (a ``step_trial.StepTrial``): each direct child of the model that holds a replaced layer (fairseq's
    encoder and decoder) becomes a step it checks (named ``prefix`` + its name: one prefix per model of an
    ensemble)."""
    targets = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if type(child) is nn.Linear and child.weight.device.type == "cpu" and child.weight.dtype in CSR_DTYPES:
                zeros = float((child.weight.detach() == 0).float().mean())
                if zeros >= min_sparsity:
                    targets.append((parent, child_name, f"{parent_name}.{child_name}".lstrip(".")))
    for parent, child_name, _ in targets:
        setattr(parent, child_name, SparseLinear(getattr(parent, child_name), plan))
        # fairseq's MultiheadAttention hands its projections' weights to torch's fused attention (the encoder's
        # self-attention), which bypasses SparseLinear, unless skip_embed_dim_check is set: set it where a
        # projection is sparse, so that it runs as the plan decides (1.27x -> 1.34x dense: batch 64, one thread)
        if child_name in PROJECTIONS and hasattr(parent, "skip_embed_dim_check"):
            parent.skip_embed_dim_check = True
    if trial is not None:
        for name, child in model.named_children():
            if any(isinstance(m, SparseLinear) for m in child.modules()):
                trial.wrap(child, prefix + name)
    return [name for _, _, name in targets]
