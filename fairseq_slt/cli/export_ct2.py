"""``fairseq-slt export-ct2``: a pruned checkpoint (or a compact file) -> a CTranslate2 model directory.

CTranslate2's own fairseq converter does the conversion; this command feeds it a plain fairseq checkpoint
(the weights expanded from a compact file, the task set to fairseq's ``translation``), refuses what the
converter cannot take before writing anything, converts into a folder beside OUT_DIR and moves it into
place only once it is verified: CTranslate2 translates the subset, and its hypotheses are compared with
fairseq-generate's (fp32: the first ``--verify-identical`` sentences identical; any quantization: BLEU on
the whole subset within ``--max-bleu-drop``).
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

from ..checkpoints import Checkpoint
from ..pruning import Failure, UserError, allow_fairseq_globals, atomic_save, atomic_write_json
from . import ct2_runtime
from .scoring import generate, score_texts

MAX_LENGTH = 200  # fairseq-generate's default --max-len-b, with --max-len-a 0
QUANTIZATIONS = ["int8", "int8_float32", "int16", "float16", "float32"]


def add_arguments(parser):
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a fairseq-slt checkpoint or compact file")
    parser.add_argument("output", metavar="OUT_DIR", help="the CTranslate2 model directory to write")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="int8",
                        help="weight type of the exported model (CTranslate2's --quantization)")
    parser.add_argument("--data", help="data-bin folder with the dictionaries and the subset to verify on "
                                       "(default: the one the checkpoint was trained on)")
    parser.add_argument("--subset", default="test", help="subset the conversion is verified on")
    parser.add_argument("--verify-identical", type=int, default=100, metavar="N",
                        help="float32: the first N sentences' hypotheses must equal fairseq-generate's")
    parser.add_argument("--max-bleu-drop", type=float, default=0.3,
                        help="CTranslate2's BLEU on the subset may be at most this far below fairseq's")
    parser.add_argument("--no-verify", action="store_true", help="convert without translating anything")
    parser.add_argument("--beam", type=int, default=5, help="beam size of the verification")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the verification")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="fairseq-generate --remove-bpe")
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2's intra_threads in the verification")
    parser.add_argument("--json", help="write the report (sizes, BLEU, timings) as JSON here")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR (and the --json report) if they exist")
    parser.add_argument("--generate-command", default=f"{sys.executable} -m fairseq_cli.generate",
                        help="how to run fairseq-generate (default: this Python's)")


def main(args):
    print(summary(run(args)))
    return 0


def run(args) -> dict:
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # the verification's dataset loading is not news
    ctranslate2 = _import_ctranslate2()
    if os.path.lexists(args.output) and not args.force:
        raise UserError(f"{args.output} exists; pass --force to replace it")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"{args.output} exists and is not a folder")
    if args.json and os.path.lexists(args.json) and not args.force:
        raise UserError(f"{args.json} exists; pass --force to overwrite it")
    checkpoint = Checkpoint(args.checkpoint, "checkpoint")
    model_args = (checkpoint.state.get("cfg") or {}).get("model") or checkpoint.state.get("args")
    if not isinstance(model_args, argparse.Namespace):
        raise UserError(f"{args.checkpoint} has no model configuration (cfg.model) that CTranslate2's converter reads")
    model_args = argparse.Namespace(**vars(model_args))
    model_args.task = "translation"  # the plugin's task only adds pruning to training
    task_cfg = (checkpoint.state.get("cfg") or {}).get("task") or {}
    for key in ("data", "source_lang", "target_lang"):  # fairseq keeps them in cfg.task
        if getattr(model_args, key, None) is None and isinstance(task_cfg, dict):
            setattr(model_args, key, task_cfg.get(key))
    model_args.data = args.data or model_args.data
    if not model_args.data or not os.path.isdir(model_args.data):
        raise UserError(f"data-bin folder not found: {model_args.data} (pass --data, the one the model was trained on)")
    if model_args.source_lang is None or model_args.target_lang is None:  # as fairseq infers them
        from fairseq.data import data_utils

        model_args.source_lang, model_args.target_lang = data_utils.infer_language_pair(model_args.data.split(":")[0])
    for lang in (model_args.source_lang, model_args.target_lang):
        if not os.path.isfile(os.path.join(model_args.data or "", f"dict.{lang}.txt")):
            raise UserError(f"no dict.{lang}.txt in {model_args.data}: pass --data, the data-bin the model was trained on")
    _check_vocabulary(checkpoint, model_args)
    _check_supported(model_args)
    parent = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".export-ct2-", dir=parent)
    try:
        plain = os.path.join(work, "plain.pt")
        atomic_save({"args": None, "cfg": {"model": model_args}, "model": checkpoint.model}, plain)
        converted = os.path.join(work, "model")
        started = time.time()
        _convert(plain, model_args.data, converted, args.quantization)
        os.remove(plain)
        report = {"checkpoint": args.checkpoint, "output": args.output, "quantization": args.quantization,
                  "convert_seconds": round(time.time() - started, 1), "bytes": _folder_bytes(converted),
                  "max_batch_size": serving_batch_size(model_args)}
        if not args.no_verify:
            report["verify"] = verify(ctranslate2, args, converted, model_args)
        report["runtime"] = ct2_runtime.runtime(converted)
        report["advice"] = ct2_runtime.isa_advice(report["runtime"]["isa"], ct2_runtime.cpu_flags(), os.environ)
        _move_into_place(converted, args.output)
        if args.json:
            atomic_write_json(report, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise UserError("ctranslate2 is not installed: pip install 'fairseq-slt[ct2]' (or pip install ctranslate2)") from None
    return ctranslate2


def _check_supported(model_args) -> None:
    """The converter's own configuration checks, run before anything is written."""
    from ctranslate2.converters import fairseq as converter

    import fairseq.models  # noqa: F401  (fills the architecture registry the check reads)

    if model_args.arch not in fairseq.models.ARCH_MODEL_NAME_REGISTRY:
        raise UserError(f"architecture {model_args.arch} is not a fairseq architecture CTranslate2 can convert")
    try:
        converter._get_model_spec(model_args)
    except (ValueError, AttributeError) as err:
        reasons = " ".join(line.strip("- ").strip() for line in str(err).splitlines() if line.strip("- ").strip())
        raise UserError(f"CTranslate2 cannot convert this model: {reasons}") from None


def _convert(plain: str, data: str, output: str, quantization: str) -> None:
    from ctranslate2.converters import FairseqConverter

    allow_fairseq_globals()  # the converter loads with weights_only=True
    try:
        FairseqConverter(plain, data).convert(output, quantization=quantization)
    except Exception as err:
        raise Failure(f"CTranslate2's converter failed: {type(err).__name__}: {err}") from None


def _check_vocabulary(checkpoint, model_args) -> None:
    """The embeddings must have one row per entry of the data's dictionaries (fairseq's converter would fail)."""
    from fairseq.data import Dictionary

    for side, lang in (("encoder", model_args.source_lang), ("decoder", model_args.target_lang)):
        path = os.path.join(model_args.data, f"dict.{lang}.txt")
        entries = len(Dictionary.load(path))
        rows = checkpoint.model.get(f"{side}.embed_tokens.weight")
        if rows is not None and rows.shape[0] != entries:
            raise UserError(f"{checkpoint.path} has {rows.shape[0]} {side} embeddings, but {path} has {entries} "
                            "entries: another vocabulary (pass --data, the data-bin the model was trained on)")


def verify(ctranslate2, args, converted: str, model_args) -> dict:
    """fairseq-generate and CTranslate2 on the same subset: identical hypotheses (float32) and BLEU."""
    from fairseq import tasks

    task = tasks.setup_task(model_args)
    task.load_dataset(args.subset)
    dataset = task.dataset(args.subset)
    sources = [[task.source_dictionary[i] for i in dataset.src[n].tolist()[:-1]] for n in range(len(dataset))]
    options = argparse.Namespace(subset=args.subset, beam=args.beam, batch_size=args.batch_size,
                                 remove_bpe=args.remove_bpe, data=model_args.data, references=None,
                                 generate_command=args.generate_command)
    started = time.time()
    generated = generate(args.checkpoint, options)
    fairseq_hyps, refs = generated.hyps, generated.refs
    fairseq_seconds = time.time() - started
    translator = ctranslate2.Translator(converted, device="cpu", inter_threads=1, intra_threads=args.threads)
    started = time.time()
    results = translator.translate_batch(sources, beam_size=args.beam, max_batch_size=args.batch_size,
                                         max_decoding_length=MAX_LENGTH)
    ct2_seconds = time.time() - started
    ct2_hyps = {n: detokenize(r.hypotheses[0], args.remove_bpe) for n, r in enumerate(results)}
    fairseq_score, ct2_score = score_texts(fairseq_hyps, refs), score_texts(ct2_hyps, refs)
    ct2_lengths = {n: len(r.hypotheses[0]) for n, r in enumerate(results)}
    # a hypothesis cut at the length limit (an untrained model repeating itself) ends wherever ties between
    # near-equal beams fall: only the first sentences that both engines ended on their own are compared
    leading = sorted(refs)[:args.verify_identical]
    cut_leading = at_limit(generated.lengths, leading) | at_limit(ct2_lengths, leading)
    first = [n for n in leading if n not in cut_leading]
    cut = min(args.verify_identical, len(refs)) - len(first)
    identical = sum(1 for n in first if fairseq_hyps.get(n) == ct2_hyps.get(n))
    report = {"subset": args.subset, "sentences": len(refs), "beam": args.beam, "fairseq_bleu": fairseq_score["bleu"],
              "ct2_bleu": ct2_score["bleu"], "signature": ct2_score["signature"], "compared": len(first), "cut_at_length_limit": cut,
              "identical": identical, "fairseq_seconds": round(fairseq_seconds, 1),
              "ct2_seconds": round(ct2_seconds, 1)}
    report["length_limit"] = runaways(fairseq_hyps, ct2_hyps, refs, generated.lengths, ct2_lengths)
    drop = fairseq_score["bleu"] - ct2_score["bleu"]
    if drop > args.max_bleu_drop:
        note = runaway_note(report["length_limit"])
        raise Failure(f"the converted model scores {ct2_score['bleu']:.2f} BLEU on {args.subset}, "
                      f"{drop:.2f} below fairseq's {fairseq_score['bleu']:.2f} (--max-bleu-drop {args.max_bleu_drop})"
                      + (f"; {note}" if note else ""))
    if args.quantization == "float32" and identical < len(first):
        raise Failure(f"float32 conversion: {len(first) - identical} of the first {len(first)} {args.subset} "
                           "hypotheses differ from fairseq-generate's")
    return report


def runaways(fairseq_hyps: dict, ct2_hyps: dict, refs: dict, fairseq_lengths: dict, ct2_lengths: dict) -> dict:
    """The sentences either engine ran to the length limit (an under-trained model's repetitions, a few hundred
    words each: enough to move a corpus BLEU by tenths), and both engines' BLEU without them."""
    fairseq_cut, ct2_cut = at_limit(fairseq_lengths, refs), at_limit(ct2_lengths, refs)
    found = {"fairseq": len(fairseq_cut), "ct2": len(ct2_cut), "either": len(fairseq_cut | ct2_cut)}
    kept = {n: ref for n, ref in refs.items() if n not in fairseq_cut | ct2_cut}
    if found["either"] and kept:
        found["fairseq_bleu_without"] = score_texts(fairseq_hyps, kept)["bleu"]
        found["ct2_bleu_without"] = score_texts(ct2_hyps, kept)["bleu"]
    return found


def at_limit(lengths: dict, ids) -> set:
    """The ids whose hypothesis ran to the length limit (a sentence without one counts as such)."""
    return {n for n in ids if lengths.get(n, MAX_LENGTH) >= MAX_LENGTH}


def runaway_note(found: dict) -> str:
    """Where the length limit's runaways account for BLEU: how many, and the two scores without them."""
    if "fairseq_bleu_without" not in found:
        return ""
    return (f"{found['either']} sentence(s) ran to the length limit ({MAX_LENGTH} tokens; fairseq "
            f"{found['fairseq']}, CTranslate2 {found['ct2']}): without them fairseq {found['fairseq_bleu_without']:.2f}, "
            f"CTranslate2 {found['ct2_bleu_without']:.2f}")


def detokenize(tokens, remove_bpe: str) -> str:
    """fairseq's --remove-bpe on a token list (sentencepiece, or a BPE continuation marker like '@@ ')."""
    text = " ".join(tokens)
    if remove_bpe == "sentencepiece":
        return text.replace(" ", "").replace("\u2581", " ").strip()
    return (text + " ").replace(remove_bpe, "").rstrip()


def _move_into_place(converted: str, output: str) -> None:
    if os.path.lexists(output):  # --force: the old folder goes only once the new one is complete
        old = tempfile.mkdtemp(prefix=".export-ct2-old-", dir=os.path.dirname(os.path.abspath(output)))
        os.replace(output, os.path.join(old, "model"))
        os.replace(converted, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(converted, output)


def serving_batch_size(model_args) -> int:
    """The max_batch_size to serve with: CTranslate2 int8 on the AMD EPYC of docs/deployment.md translated the
    128-dim demo-size model 1.26x faster in batches of 16 than of 64 (one worker), and the 512-dim base-size one as
    fast in batches of 32 as of 64 (one worker) and 1.24x faster with two workers."""
    return 16 if getattr(model_args, "decoder_embed_dim", 512) < 512 else 32


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def summary(report: dict) -> str:
    lines = [f"{report['output']}: CTranslate2 {report['quantization']} model, {report['bytes']:,} bytes "
             f"(converted in {report['convert_seconds']} s)"]
    check = report.get("verify")
    if check:
        lines.append(f"  verified on {check['subset']} ({check['sentences']} sentences, beam {check['beam']}): "
                     f"BLEU fairseq {check['fairseq_bleu']:.2f}, CTranslate2 {check['ct2_bleu']:.2f}; "
                     f"{check['identical']}/{check['compared']} of the first hypotheses identical"
                     + (f" ({check['cut_at_length_limit']} cut at the length limit, not compared)"
                        if check["cut_at_length_limit"] else "") + "; "
                     f"decoding {check['fairseq_seconds']} s (fairseq-generate, whole process) vs "
                     f"{check['ct2_seconds']} s (CTranslate2)")
        note = runaway_note(check.get("length_limit", {}))
        if note:
            lines.append(f"  {note}")
    # on CPU CTranslate2 serves fastest with one thread a batch and a batch per core (docs/deployment.md)
    lines.append(f"  serve it: ctranslate2.Translator({report['output']!r}, device='cpu', inter_threads=<cores>, "
                 f"intra_threads=1).translate_batch(sentences, beam_size=5, "
                 f"max_batch_size={report['max_batch_size']})")
    found = report.get("runtime")
    if found:
        lines.append(f"  here CTranslate2 runs {found['isa']} code, int8 products by {found['int8_gemm']} and float32 "
                     f"products by {found['float32_gemm']}")
    if report.get("advice"):
        lines.append(f"  {report['advice']}")
    return "\n".join(lines)
