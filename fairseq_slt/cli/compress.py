"""``fairseq-slt compress``: a pruned checkpoint -> a compact one (bitmap + kept values per pruned matrix)."""
import io
import lzma
import os

import torch

from ..checkpoints import Checkpoint, inference_state
from ..pruning import UserError, atomic_save, atomic_write_json, safe_load
from ..pruning.compact import VALUE_DTYPES, compress, is_compact, matrix_sparsity
from ..pruning.io import refuse_overwrite


def add_arguments(parser):
    parser.add_argument("input", metavar="IN", help="a pruned fairseq checkpoint (e.g. checkpoint_best.pt)")
    parser.add_argument("output", metavar="OUT", help="the compact checkpoint to write "
                        "(fairseq-generate --user-dir fairseq_slt --path OUT reads it directly)")
    parser.add_argument("--values", choices=list(VALUE_DTYPES), default="fp32",
                        help="dtype of the kept values (fp32: bit-exact; fp16/bf16: rounded, about half the size)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT (and the --json report) if they exist")
    parser.add_argument("--xz-baseline", action="store_true",
                        help="also report xz -9 of IN and of IN's weights as a plain dense checkpoint (slow)")
    parser.add_argument("--json", help="write the size report (totals and every tensor) as JSON here")
    parser.add_argument("--quiet", action="store_true", help="print the totals only, not every layer")
    parser.add_argument("--ema", action="store_true",
                        help="store fairseq's --store-ema average of the weights as the model (masked like the "
                             "run's weights); without it, the average is left out, as training state")


EMA_KEYS = ("ema", "ema_fp32_params")  # fairseq's --store-ema average in extra_state (and its fp32 copies)


def main(args):
    print_report(run(args), args.quiet)
    return 0


def run(args) -> dict:
    refuse_overwrite(args.output, args.force)
    if args.json:
        refuse_overwrite(args.json, args.force)
    checkpoint = Checkpoint(args.input, "input checkpoint", state=_load_input(args.input))
    meta = inference_state(checkpoint.state)
    model = _average(checkpoint) if args.ema else checkpoint.model
    left_out = [key for key in EMA_KEYS if key in meta["extra_state"]]
    meta["extra_state"] = {key: value for key, value in meta["extra_state"].items() if key not in EMA_KEYS}
    mask = checkpoint.mask()
    state, rows = compress(model, meta, args.values, masks=mask if mask is not None else {})
    atomic_save(state, args.output)
    dense = sum(row["dense_fp32_bytes"] for row in rows)
    report = {"input": args.input, "output": args.output, "values": args.values,
              "weight_sparsity": matrix_sparsity(rows), "dense_fp32_bytes": dense,
              "input_bytes": os.path.getsize(args.input), "compact_bytes": os.path.getsize(args.output),
              "weights": "the --store-ema average" if args.ema else "the model", "left_out": left_out,
              "tensors": rows}
    report["compact_ratio"] = report["compact_bytes"] / dense
    if args.xz_baseline:
        with open(args.input, "rb") as handle:
            report["xz_input_bytes"] = len(lzma.compress(handle.read(), preset=9))
        plain = io.BytesIO()
        torch.save(dict(meta, model=checkpoint.model), plain)
        report["xz_dense_weights_bytes"] = len(lzma.compress(plain.getvalue(), preset=9))
    if args.json:
        atomic_write_json(report, args.json)
    return report


def _average(checkpoint: Checkpoint) -> dict:
    """fairseq's --store-ema average, a state dict with the model's names."""
    average = (checkpoint.state.get("extra_state") or {}).get("ema")
    if not isinstance(average, dict):
        raise UserError(f"--ema: {checkpoint.path} holds no --store-ema average (train with --store-ema)")
    if set(average) != set(checkpoint.model) or any(
            not torch.is_tensor(average[k]) or average[k].shape != checkpoint.model[k].shape for k in average):
        raise UserError(f"--ema: the --store-ema average in {checkpoint.path} does not match its model's tensors")
    return average


def _load_input(path: str):
    state = safe_load(path, "input checkpoint")
    if is_compact(state):
        raise UserError(f"{path} is a compact checkpoint already (fairseq-slt decompress restores it)")
    return state


def print_report(report: dict, quiet: bool = False) -> None:
    dense = report["dense_fp32_bytes"]
    lines = [f"{report['input']}: weight matrices {100 * report['weight_sparsity']:.2f} % zeros",
             f"  dense fp32 weights  {dense:>12,} bytes",
             f"  compact file        {report['compact_bytes']:>12,} bytes = {100 * report['compact_ratio']:.2f} % "
             f"(values {report['values']}{', bit-exact' if report['values'] == 'fp32' else ''}): {report['output']}"]
    if report.get("weights") == "the --store-ema average":
        lines.append("  weights: fairseq's --store-ema average, stored as the model")
    elif report.get("left_out"):
        lines.append(f"  left out: fairseq's --store-ema average ({', '.join(report['left_out'])}: training state, as "
                     "the optimizer's; --ema stores it as the model)")
    for key, label in (("xz_input_bytes", "xz -9 of IN"), ("xz_dense_weights_bytes", "xz -9 dense weights")):
        if key in report:
            lines.append(f"  {label:<19} {report[key]:>12,} bytes = {100 * report[key] / dense:.2f} %")
    if not quiet:
        lines.append(f"  {'tensor':<52} {'shape':>12} {'zeros':>8} {'bytes':>10} {'of fp32':>8}")
        for row in report["tensors"]:
            zeros = "" if row.get("nonzero") is None else f"{100 * (1 - row['nonzero'] / row['numel']):.1f} %"
            share = f"{100 * row['bytes'] / row['dense_fp32_bytes']:.1f} %" if row["dense_fp32_bytes"] else ""
            shape = "x".join(map(str, row["shape"]))
            lines.append(f"  {row['name']:<52} {shape:>12} {zeros:>8} {row['bytes']:>10,} {share:>8}")
    print("\n".join(lines))
