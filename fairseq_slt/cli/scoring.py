"""Scoring one checkpoint for ``fairseq-slt results``: fairseq-generate on a subset, sacreBLEU and chrF on
the detokenized output, cached beside the checkpoint (``scores.json``) while its weights and the options are
unchanged."""
import json
import os
import shlex
import subprocess
import sys
from typing import Dict, List, NamedTuple, Optional

from ..checkpoints import Checkpoint, weights_digest
from ..pruning import Failure, UserError, atomic_write_json

SCORES = "scores.json"


def score(run: str, checkpoint_path: str, args, weights: Optional[str] = None) -> Optional[dict]:
    """The cached score of the checkpoint's weights, or a new one (None with --no-score and no cache).

    The cache is keyed by the weights' digest (``weights``, when the caller has it), not by the file: a run
    packed and unpacked on another machine keeps its scores. An entry of an older cache, keyed by the file's
    size and mtime, still counts while those match, and is then keyed by the digest too."""
    weights = weights or weights_digest(Checkpoint(checkpoint_path, "checkpoint", mmap=True))
    common = {"subset": args.subset, "beam": args.beam, "remove_bpe": args.remove_bpe, "data": args.data,
              "references": os.path.abspath(args.references) if args.references else None}
    stat = os.stat(checkpoint_path)
    name = os.path.basename(checkpoint_path)
    options = {"checkpoint": name, "weights": weights, **common}
    by_file = {"checkpoint": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **common}
    cache_path = os.path.join(run, SCORES)
    cache = []
    if os.path.isfile(cache_path):
        with open(cache_path) as handle:
            cache = json.load(handle)
    for entry in cache:
        if entry["options"] == options:
            return entry["result"]
    result = next((entry["result"] for entry in cache if entry["options"] == by_file), None)
    if result is None:
        if args.no_score:
            return None
        print(f"scoring {checkpoint_path} (beam {args.beam}, {args.subset})", file=sys.stderr, flush=True)
        result = generate_and_score(checkpoint_path, args)
    atomic_write_json(cache + [{"options": options, "result": result}], cache_path)
    return result


def generate_and_score(checkpoint_path: str, args) -> dict:
    generated = generate(checkpoint_path, args)
    return dict(score_texts(generated.hyps, generated.refs), command=shlex.join(generated.command))


class Generated(NamedTuple):
    hyps: Dict[int, str]  # sentence id -> detokenized hypothesis
    refs: Dict[int, str]  # sentence id -> reference
    lengths: Dict[int, int]  # sentence id -> the hypothesis' tokens, end of sentence excluded
    command: List[str]
    log: str = ""  # fairseq-generate's own output (its "Translated ... in X s", its BLEU line)


def generate(checkpoint_path: str, args) -> Generated:
    """fairseq-generate on ``args.subset``; references from ``args.references`` when given, else fairseq's
    target side."""
    data = args.data or (Checkpoint(checkpoint_path, "checkpoint", mmap=True).state.get("cfg") or {}).get(
        "task", {}).get("data")
    command = [*shlex.split(args.generate_command), data, "--path", checkpoint_path, "--user-dir",
               os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "--task", "translation_slt",
               "--gen-subset", args.subset, "--beam", str(args.beam), "--batch-size", str(args.batch_size),
               "--remove-bpe", args.remove_bpe, "--scoring", "sacrebleu"]
    if not _has_cuda():
        command.append("--cpu")
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise Failure(f"fairseq-generate failed on {checkpoint_path}: {last}")
    hyps, refs, lengths = {}, {}, {}
    for line in result.stdout.splitlines():
        tag, _, rest = line.partition("\t")
        if tag.startswith("D-"):
            hyps[int(tag[2:])] = rest.split("\t", 1)[1]
        elif tag.startswith("T-"):
            refs[int(tag[2:])] = rest
        elif tag.startswith("P-"):  # one positional score per token, end of sentence included
            lengths[int(tag[2:])] = len(rest.split()) - 1
    if args.references:
        with open(args.references, encoding="utf-8") as handle:
            refs = dict(enumerate(line.rstrip("\n") for line in handle))
        if hyps and max(hyps) >= len(refs):
            raise UserError(f"--references has {len(refs)} lines, fewer than the {args.subset} subset's sentences")
    return Generated(hyps, refs, lengths, command, result.stdout + result.stderr)


def score_texts(hyps: dict, refs: dict) -> dict:
    """sacreBLEU and chrF of id -> hypothesis against id -> reference (a missing hypothesis scores as empty)."""
    from sacrebleu.metrics import BLEU, CHRF

    # fairseq-generate prints nothing for a sentence whose beam search ends without a hypothesis
    ids = sorted(refs)
    bleu, chrf = BLEU(), CHRF()
    hypotheses, references = [hyps.get(i, "") for i in ids], [[refs[i] for i in ids]]
    return {"bleu": round(bleu.corpus_score(hypotheses, references).score, 2),
            "chrf": round(chrf.corpus_score(hypotheses, references).score, 2),
            "signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
            "sentences": len(ids), "missing_hypotheses": sum(1 for i in ids if i not in hyps)}


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False
