"""Compact checkpoints: each pruned weight matrix as an entropy-coded bitmap plus its kept values.

A matrix with zeros is stored as (1) the bitmap of its nonzero entries, bit-packed and LZMA-coded, and
(2) its nonzero values in the chosen dtype, byte-planes split (all high bytes, then the next, ...) and
LZMA-coded: the sign/exponent plane of trained weights codes to a few bits, the mantissa planes stay
as they are.  Vectors and matrices without zeros are stored as tensors.  A matrix a pruning mask covers
is always stored as a bitmap, and its bitmap is the mask itself (named in the index, so the mask is read
back exactly); its pruned positions come back as +0.0 even where an older run left -0.0.  Elsewhere zeros
are told apart by bit pattern, so with fp32 values the round trip is bit-exact (-0.0 survives).  Nothing
here imports fairseq.
"""
import hashlib
import json
import lzma
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .io import UserError

FORMAT = "fairseq-slt-compact"
VERSION = 1
VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_SPARSITY = 0.1  # a checkpoint whose weight matrices are less sparse than this is refused as dense
_LZMA = dict(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])


def aliases(model: Mapping[str, torch.Tensor]) -> Dict[str, str]:
    """name -> the first name holding the same tensor (tied embeddings); a name maps to itself if first."""
    first: Dict[tuple, str] = {}
    result = {}
    for name, tensor in model.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        result[name] = first.setdefault(key, name)
    return result


def _bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's raw bytes as a (numel, itemsize) uint8 array."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().reshape(flat.numel(), flat.element_size())


def _split_planes(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values.T).tobytes()


def _join_planes(data: bytes, count: int, itemsize: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(itemsize, count).T


def compress(model: Mapping[str, torch.Tensor], meta: dict, values: str = "fp32",
             masks: Mapping[str, torch.Tensor] = {}, dense_ok: bool = False) -> Tuple[dict, List[dict]]:
    """(compact state, per-tensor report rows) for a state dict; ``meta``: the rest of the checkpoint;
    ``masks``: the run's pruning mask, name -> bool tensor (True: kept); each masked matrix's bitmap is
    its mask, see ``expand_with_mask``. A weight that is not zero where the mask prunes is refused, and so
    is a dense state dict unless ``dense_ok`` (its compact file is its unique tensors, tied ones once).

    Every byte of weights goes into one blob (one storage in the file); ``index`` locates each tensor."""
    if values not in VALUE_DTYPES:
        raise UserError(f"--values must be one of {', '.join(VALUE_DTYPES)}, not {values}")
    value_dtype = VALUE_DTYPES[values]
    entries, blobs, report, offset = [], [], [], 0
    matrix_total = matrix_zeros = 0

    def put(data: bytes) -> List[int]:
        nonlocal offset
        blobs.append(data)
        offset += len(data)
        return [offset - len(data), len(data)]

    names = aliases(model)
    unknown = sorted(set(masks) - set(names))
    if unknown:
        raise UserError(f"the mask names {unknown[0]}, which is not in the checkpoint's weights")
    mask_name = {names[name]: name for name in masks}  # a tied tensor's mask is kept under the mask's name
    for name, first in names.items():
        if first != name:
            entries.append({"name": name, "kind": "alias", "of": first})
            continue
        tensor = model[name].detach()
        entry = {"name": name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype)}
        stored = tensor.to(value_dtype) if tensor.is_floating_point() else tensor
        nonzero = _bytes(tensor).any(axis=1) if tensor.is_floating_point() and tensor.dim() >= 2 else None
        if name in mask_name and nonzero is not None:
            nonzero = _mask_bitmap(name, tensor, masks[mask_name[name]])
        if nonzero is not None:
            matrix_total += nonzero.size
            matrix_zeros += int(nonzero.size - nonzero.sum())
        row = {"name": name, "shape": list(tensor.shape), "numel": tensor.numel(),
               "nonzero": None if nonzero is None else int(nonzero.sum()),
               "dense_fp32_bytes": tensor.numel() * 4 if tensor.is_floating_point() else 0}
        dense_bytes = stored.numel() * stored.element_size()
        bitmap = kept = b""
        if name in mask_name and nonzero is None:
            raise UserError(f"the mask covers {name}, which is not a floating-point matrix")
        if nonzero is not None and (name in mask_name or not nonzero.all()):
            bitmap = lzma.compress(np.packbits(nonzero).tobytes(), **_LZMA)
            kept = lzma.compress(_split_planes(_bytes(stored.reshape(-1)[torch.from_numpy(nonzero)])), **_LZMA)
        if bitmap and (name in mask_name or len(bitmap) + len(kept) < dense_bytes):
            entry.update(kind="packed", stored=_dtype_name(value_dtype), nonzero=row["nonzero"],
                         bitmap=put(bitmap), values=put(kept))
            if name in mask_name:
                entry["mask"] = mask_name[name]
            row.update(kind="packed", bytes=len(bitmap) + len(kept), bitmap_bytes=len(bitmap), values_bytes=len(kept))
        else:
            entry.update(kind="dense", stored=_dtype_name(stored.dtype), data=put(_bytes(stored).tobytes()))
            row.update(kind="dense", bytes=dense_bytes)
        entries.append(entry)
        report.append(row)
    if not dense_ok and (matrix_total == 0 or matrix_zeros < MIN_SPARSITY * matrix_total):
        raise UserError(
            f"the checkpoint is dense (its weight matrices are {100 * matrix_zeros / max(matrix_total, 1):.2f} % "
            f"zeros, below {100 * MIN_SPARSITY:.0f} %): a compact file would be no smaller; compress a pruned checkpoint")
    index = lzma.compress(json.dumps(entries).encode(), **_LZMA)
    raw = index + b"".join(blobs)
    state = {"format": FORMAT, "version": VERSION, "values": values, "index": len(index),
             "checkpoint": meta, "blob": torch.frombuffer(bytearray(raw), dtype=torch.uint8)}
    state["sha256"] = _checksum(state, raw)
    return state, report


def _mask_bitmap(name: str, tensor: torch.Tensor, keep) -> np.ndarray:
    """The mask as the matrix's bitmap, once the weights are checked to be zero (either sign) where it prunes."""
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != tuple(tensor.shape):
        raise UserError(f"the mask of {name} is not a boolean tensor of the weight's shape {tuple(tensor.shape)}")
    keep = keep.reshape(-1).cpu()
    stray = int((tensor.reshape(-1)[~keep] != 0).sum())
    if stray:
        raise UserError(f"{name} holds {stray} nonzero weights where its mask prunes: the checkpoint does not "
                           "match its mask")
    return keep.numpy().copy()


def is_compact(state) -> bool:
    return isinstance(state, dict) and state.get("format") == FORMAT


def expand(state: dict, source: str = "compact checkpoint") -> Dict[str, torch.Tensor]:
    """The state dict a compact state was made from (tied names share one tensor again)."""
    return expand_with_mask(state, source)[0]


def expand_with_mask(state: dict, source: str = "compact checkpoint") -> Tuple[Dict[str, torch.Tensor],
                                                                             Dict[str, torch.Tensor]]:
    """(state dict, mask): the mask as boolean tensors, each masked matrix's nonzero bitmap ({} if none)."""
    if not is_compact(state):
        raise UserError(f"{source} is not a compact checkpoint (made by fairseq-slt compress)")
    if state.get("version") != VERSION:
        raise UserError(f"{source} has compact format version {state.get('version')}; this fairseq-slt reads {VERSION}")
    try:
        blob = state["blob"].numpy().tobytes()
        intact = state.get("sha256") == _checksum(state, blob)
    except Exception:  # a structure too damaged to hash
        intact = False
    if not intact:
        raise UserError(f"{source} is corrupt: its checksum does not match its content")
    index, blob = blob[:state["index"]], memoryview(blob)[state["index"]:]
    model: Dict[str, torch.Tensor] = {}
    mask: Dict[str, torch.Tensor] = {}
    try:
        entries = json.loads(lzma.decompress(index, **_LZMA))
        seen: set = set()
        for entry in entries:
            _check_entry(entry, len(blob), seen)
            seen.add(entry["name"])
    except (ValueError, TypeError, KeyError, lzma.LZMAError) as err:
        raise UserError(f"{source} has an index that does not describe its data ({err})") from None
    for entry in entries:
        name = entry["name"]
        if entry["kind"] == "alias":
            model[name] = model[entry["of"]]
        elif entry["kind"] == "dense":
            start, length = entry["data"]
            raw = torch.frombuffer(bytearray(blob[start:start + length]), dtype=torch.uint8)
            stored = raw.view(getattr(torch, entry["stored"])).reshape(entry["shape"])
            model[name] = stored.to(getattr(torch, entry["dtype"]))
        else:
            try:
                model[name], nonzero = _unpack(entry, blob)
            except UserError as err:
                raise UserError(f"{source}: {err}") from None
            if "mask" in entry:
                mask[entry["mask"]] = nonzero
    return model, mask


DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
MAX_WEIGHTS_PER_BYTE = 1 << 16  # a packed matrix claims at most this many weights per byte of its coded streams


def _check_entry(entry, blob_length: int, earlier: set) -> None:
    """An index entry checked against the blob before anything is allocated: known kinds and dtypes (a
    name is never looked up in torch unchecked), a shape of non-negative ints, byte ranges inside the
    blob, a dense tensor's exact size, and no packed matrix claiming more weights than its bytes can code."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError("an entry without a name")
    name, kind = entry["name"], entry.get("kind")
    if kind == "alias":
        if entry.get("of") not in earlier:
            raise ValueError(f"{name} is an alias of no earlier tensor")
        return
    if kind not in ("dense", "packed"):
        raise ValueError(f"{name} has kind {kind!r}")
    if entry.get("dtype") not in DTYPES or entry.get("stored") not in DTYPES:
        raise ValueError(f"{name} has dtype {entry.get('dtype')!r} stored as {entry.get('stored')!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or len(shape) > 8:
        raise ValueError(f"{name} has shape {shape!r}")
    numel = int(np.prod(shape)) if shape else 1
    ranges = [entry.get(key) for key in (("data",) if kind == "dense" else ("bitmap", "values"))]
    for span in ranges:
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and v >= 0 for v in span)
                and span[0] + span[1] <= blob_length):
            raise ValueError(f"{name} points outside the data")
    itemsize = torch.empty(0, dtype=getattr(torch, entry["stored"])).element_size()
    if kind == "dense" and ranges[0][1] != numel * itemsize:
        raise ValueError(f"{name} claims {numel} values in {ranges[0][1]} bytes")
    if kind == "packed":
        count = entry.get("nonzero")
        coded = ranges[0][1] + ranges[1][1]
        if not isinstance(count, int) or not 0 <= count <= numel or numel > MAX_WEIGHTS_PER_BYTE * (coded + 64):
            raise ValueError(f"{name} claims {numel} weights ({count} kept) in {coded} coded bytes")


def _decompress_exactly(data, length: int, what: str) -> bytes:
    """LZMA-decode a stream that must hold exactly ``length`` bytes (never more is produced)."""
    decoder = lzma.LZMADecompressor(**_LZMA)
    out = decoder.decompress(data, max_length=length + 1)
    if len(out) != length:
        raise UserError(f"{what} decodes to {len(out)}{'+' if len(out) > length else ''} bytes, not {length}")
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _unpack(entry: dict, blob) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the tensor, its nonzero bitmap as a boolean tensor)"""
    shape, count = entry["shape"], entry["nonzero"]
    numel = int(np.prod(shape)) if shape else 1
    stored = getattr(torch, entry["stored"])
    itemsize = torch.empty(0, dtype=stored).element_size()
    (b_start, b_len), (v_start, v_len) = entry["bitmap"], entry["values"]
    packed = _decompress_exactly(blob[b_start:b_start + b_len], (numel + 7) // 8, f"the bitmap of {entry['name']}")
    nonzero = np.unpackbits(np.frombuffer(packed, np.uint8), count=numel).astype(bool)
    if int(nonzero.sum()) != count:
        raise UserError(f"the bitmap of {entry['name']} marks {int(nonzero.sum())} weights, the index {count}")
    planes = _decompress_exactly(blob[v_start:v_start + v_len], count * itemsize, f"the values of {entry['name']}")
    kept = torch.from_numpy(_join_planes(planes, count, itemsize).copy()).view(stored).reshape(-1)
    tensor = torch.zeros(numel, dtype=getattr(torch, entry["dtype"]))
    bitmap = torch.from_numpy(nonzero)
    tensor[bitmap] = kept.to(tensor.dtype)
    return tensor.reshape(shape), bitmap.reshape(shape)


def _checksum(state: dict, blob: bytes) -> str:
    """SHA-256 over the format fields and the blob (the index and every byte of every tensor)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([state[key] for key in ("format", "version", "values", "index")]).encode())
    digest.update(blob)
    return digest.hexdigest()


def matrix_sparsity(report: List[dict]) -> Optional[float]:
    """Fraction of zeros over the floating weight matrices in a compress report."""
    rows = [row for row in report if len(row["shape"]) >= 2 and row.get("nonzero") is not None]
    total = sum(row["numel"] for row in rows)
    return 1 - sum(row["nonzero"] for row in rows) / total if total else None
