"""``fairseq-slt iterate``: iterative pruning, one ``fairseq-train`` run per sparsity level.

Each level's mask comes from the previous level's converged checkpoint, and its weights from the
previous level's own theta_k (the paper) or the dense run's (Frankle et al.).  A level whose run
finished is skipped when the driver is rerun; an interrupted level resumes from its checkpoint_last.
"""
import argparse
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from ..run import folder as run_dir
from ..checkpoints import Checkpoint, rewind_point_path
from ..pruning import UserError, atomic_write_json
from ..pruning.methods import COMBINABLE, COMBINED, TABLE
from ..pruning.schedule import check_schedule
from . import scoring
from .stages import Stage, plan_stages

COMBINATIONS = tuple(COMBINED.values())  # --combine's choices besides none

DEFAULT_LEVELS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.98"
PLUGIN_ARGS = (("--task", "translation_slt"), ("--criterion", "label_smoothed_cross_entropy_slt"))
USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESERVED = ("--save-dir", "--prune-", "--save-rewind-points", "--restore-file")
STAGE_FILE = "stage.json"  # the command a stage was made with (without --train-command)
PR_SET_PDEATHSIG = 1


def add_arguments(parser):
    parser.add_argument("--work-dir", required=True, help="one folder per level goes here, plus summary.json")
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="increasing sparsities (the paper's by default)")
    parser.add_argument("--method", choices=[m.name for m in TABLE.values() if m.from_checkpoints], default="slt",
                        help="method of every level")
    parser.add_argument("--rewind-k", type=int, default=0, help="update k of the rewind point theta_k (slt, clt)")
    parser.add_argument("--rewind-source", choices=("previous", "dense"), default="previous",
                        help="theta_k of the previous level's run (paper) or of the dense run (Frankle et al.)")
    parser.add_argument("--dense-dir", help="a finished dense run with checkpoint_best.pt and its rewind points; "
                                            "default: the driver trains one in WORK/dense")
    parser.add_argument("--combine", choices=("none", *COMBINATIONS), default="none",
                        help="slt-mp: SLT levels up to --intermediate, then MP to the last level; "
                             "mp-slt: MP to --intermediate, then SLT levels above it")
    parser.add_argument("--pattern-group", type=int, default=0, metavar="M",
                        help="N:M levels: each level L keeps M*(1-L) of every M weights (--prune-pattern); 0: unstructured")
    parser.add_argument("--intermediate", type=float, help="the intermediate sparsity s_i of --combine")
    parser.add_argument("--mp-start", type=int, default=0, help="MP stage: --prune-start")
    parser.add_argument("--mp-end", type=int, default=0, help="MP stage: --prune-end")
    parser.add_argument("--mp-frequency", type=int, default=100, help="MP stage: --prune-frequency")
    parser.add_argument("--bleu", action="store_true",
                        help="also score each level on the valid set (sacreBLEU on detokenized output, as results)")
    parser.add_argument("--beam", type=int, default=4, help="--bleu: beam size")
    parser.add_argument("--batch-size", type=int, default=128, help="--bleu: sentences a batch")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="--bleu: fairseq-generate --remove-bpe")
    parser.add_argument("--train-command", default=f"{sys.executable} -m fairseq_cli.train",
                        help="how to run fairseq-train, e.g. a cluster or torchrun wrapper (default: this Python's)")
    parser.add_argument("--generate-command", default=f"{sys.executable} -m fairseq_cli.generate",
                        help="how to run fairseq-generate for --bleu (default: this Python's)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands, run nothing")
    parser.add_argument("train_args", nargs="*", metavar="-- DATA FAIRSEQ_TRAIN_OPTIONS",
                        help="after --: the data folder and fairseq-train options shared by every run")


def parse_levels(text: str):
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--levels must be comma-separated sparsities, got {text!r}") from None
    if not levels or any(not 0.0 < v < 1.0 for v in levels):
        raise UserError(f"--levels must be sparsities in (0, 1), got {text!r}")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise UserError(f"--levels must be strictly increasing, got {text!r}")
    return levels


def option_value(args, option: str):
    """The value of ``--option V`` or ``--option=V`` in an argument list (the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def validate(args, levels):
    if not args.train_args or args.train_args[0].startswith("-"):
        raise UserError("give the data folder and fairseq-train options after --")
    data = args.train_args[0]
    if not os.path.isdir(data) or not any(n.startswith("dict.") for n in os.listdir(data)):
        raise UserError(f"the data folder (the first argument after --) {data} "
                        f"{'holds no fairseq dictionaries (dict.*.txt)' if os.path.isdir(data) else 'is not a folder'}")
    if os.path.exists(args.work_dir) and not os.path.isdir(args.work_dir):
        raise UserError(f"--work-dir {args.work_dir} exists and is not a folder")
    max_update = option_value(args.train_args, "--max-update")
    try:
        max_update = int(max_update) if max_update is not None else 0
    except ValueError:
        raise UserError(f"--max-update must be a number of updates, got {max_update!r}") from None
    if max_update > 0:
        for option, update in (("--rewind-k", args.rewind_k), ("--mp-end", args.mp_end)):
            if update > max_update:
                raise UserError(f"{option} {update} is beyond --max-update {max_update}: every run stops before "
                                   "update " + str(update))
    for arg in args.train_args:
        if arg.startswith(RESERVED):
            raise UserError(f"{arg} is set by the driver for every level; leave it out")
    for option in ("train_command", "generate_command"):
        if not shlex.split(getattr(args, option)):
            raise UserError(f"--{option.replace('_', '-')} is empty")
    if TABLE[args.method].rewind_to == "theta_k" and args.rewind_k <= 0:
        raise UserError(f"--method {args.method} needs --rewind-k > 0 (about 5 % of a run's updates)")
    if args.pattern_group:
        if args.pattern_group < 2:
            raise UserError(f"--pattern-group must be at least 2, got {args.pattern_group}")
        odd = [level for level in levels if abs(level * args.pattern_group - round(level * args.pattern_group)) > 1e-9]
        if odd:
            raise UserError(f"--pattern-group {args.pattern_group}: level {odd[0]} is not a whole number of weights "
                            f"of every {args.pattern_group} (use levels k/{args.pattern_group})")
    if args.combine in COMBINATIONS:
        if args.intermediate is None:
            raise UserError(f"--combine {args.combine} needs --intermediate")
        if args.method not in COMBINABLE:
            raise UserError(f"--combine {args.combine} combines MP with --method {'/'.join(COMBINABLE)}")
        if args.intermediate >= levels[-1]:
            raise UserError(f"--intermediate {args.intermediate} must be below the last level {levels[-1]}")
        check_schedule(args.intermediate, levels[-1], args.mp_start, args.mp_end, args.mp_frequency,
                       ("--intermediate", "the last of --levels", "--mp-start", "--mp-end", "--mp-frequency"))
    if args.dense_dir:
        for update in sorted({0, args.rewind_k}):
            for path in (os.path.join(args.dense_dir, "checkpoint_best.pt"), rewind_point_path(args.dense_dir, update)):
                if not os.path.isfile(path):
                    raise UserError(f"--dense-dir lacks {path}")


class Driver:
    def __init__(self, args, stages):
        self.args, self.stages = args, stages
        self.summary_path = os.path.join(args.work_dir, "summary.json")
        self.rows = {}
        if os.path.isfile(self.summary_path):
            with open(self.summary_path) as handle:
                self.rows = {row["name"]: row for row in json.load(handle).get("stages", [])}

    def dir(self, name: str) -> str:
        if name == "dense" and self.args.dense_dir:
            return self.args.dense_dir
        return os.path.join(self.args.work_dir, name)

    def command(self, stage: Stage):
        args = [*shlex.split(self.args.train_command), *self.args.train_args]
        for option, value in (("--user-dir", USER_DIR), *PLUGIN_ARGS):
            if option not in args:
                args += [option, value]
        args += ["--save-dir", self.dir(stage.name), "--prune-method", stage.method, *stage.options]
        if stage.mask_from:
            args += ["--prune-mask-from", os.path.join(self.dir(stage.mask_from), "checkpoint_best.pt")]
        if stage.rewind_from:
            args += ["--prune-rewind-from", rewind_point_path(self.dir(stage.rewind_from), stage.rewind_point)]
        return args

    def run(self) -> int:
        todo = [s for s in self.stages if not self.finished(s)]
        print(f"fairseq-slt iterate: {len(self.stages)} stages, {len(self.stages) - len(todo)} finished", flush=True)
        durations = []
        for index, stage in enumerate(self.stages, 1):
            label = f"[{index}/{len(self.stages)}] {stage.name}"
            if self.finished(stage):
                print(f"{label}: finished, skipped", flush=True)
                continue
            command = self.command(stage)
            if self.args.dry_run:
                print(f"{label}: {' '.join(command)}")
                continue
            remaining = sum(1 for s in self.stages[index:] if not self.finished(s))
            eta = f", ETA {_minutes(sum(durations) / len(durations) * (remaining + 1))}" if durations else ""
            last = os.path.join(self.dir(stage.name), "checkpoint_last.pt")
            resumed_at = Checkpoint(last, mmap=True).num_updates if os.path.isfile(last) else None
            going_on = f", resuming at update {resumed_at}" if resumed_at is not None else ""
            print(f"{label}: training ({stage.method}, sparsity {stage.sparsity:g}){going_on}{eta}", flush=True)
            started = time.time()
            self.train(stage, command)
            took = time.time() - started
            if resumed_at is None:  # a resumed stage's time says nothing about a whole one's
                durations.append(took)
            row = self.record(stage, took)
            print(f"{label}: done in {_minutes(took)}, sparsity {row['sparsity']:.4f}, "
                  f"best valid loss {row['best_valid_loss']}", flush=True)
        if not self.args.dry_run:
            print(f"summary: {self.summary_path}")
        return 0

    def finished(self, stage: Stage) -> bool:
        return run_dir.is_done(self.dir(stage.name))

    def settings(self, stage: Stage):
        """The stage's command without --train-command: what its results were made with."""
        return self.command(stage)[len(shlex.split(self.args.train_command)):]

    def check_settings(self) -> None:
        """A stage made with other settings is never reused (nor continued): one error line says what changed."""
        for stage in self.stages:
            path = os.path.join(self.dir(stage.name), STAGE_FILE)
            if not os.path.isfile(path):
                continue
            with open(path) as handle:
                made_with = json.load(handle)["command"]
            now = self.settings(stage)
            if made_with != now:
                before, after = _options(made_with), _options(now)
                changed = [f"{k} {before.get(k, '(unset)')} there, {after.get(k, '(unset)')} here"
                           for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
                raise UserError(f"stage {stage.name} in {self.args.work_dir} was made with other settings "
                                   f"({'; '.join(changed) or 'argument order'}): use another --work-dir")

    def train(self, stage: Stage, command) -> None:
        folder = self.dir(stage.name)
        os.makedirs(folder, exist_ok=True)
        stage_file = os.path.join(folder, STAGE_FILE)
        if not os.path.isfile(stage_file):
            atomic_write_json({"command": self.settings(stage)}, stage_file)
        with open(os.path.join(folder, "train.log"), "a") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_dies_with(os.getpid()),
                                   env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if code != 0:
            raise UserError(f"stage {stage.name} failed (exit {code}); see {os.path.join(folder, 'train.log')}")
        if not os.path.isfile(os.path.join(folder, "checkpoint_best.pt")):
            raise UserError(f"stage {stage.name} wrote no checkpoint_best.pt; see its train.log")

    def record(self, stage: Stage, seconds: float) -> dict:
        folder = self.dir(stage.name)
        best = Checkpoint(os.path.join(folder, "checkpoint_best.pt"))
        mask = best.mask()
        previous = self.stages[self.stages.index(stage) - 1] if self.stages.index(stage) > 0 else None
        if mask is not None and previous is not None and TABLE[previous.method].prunes:
            before = Checkpoint(os.path.join(self.dir(previous.name), "checkpoint_best.pt")).mask()
            if before is not None and not mask.within(before):
                raise UserError(f"stage {stage.name}: its mask unprunes weights of {previous.name}'s mask")
        row = {"name": stage.name, "method": stage.method, "target_sparsity": stage.sparsity,
               "sparsity": mask.sparsity() if mask is not None else 0.0,
               "best_valid_loss": best.state.get("extra_state", {}).get("best"),
               "valid_bleu": self.bleu(best.path) if self.args.bleu else None,
               "checkpoint": best.path, "mask": os.path.join(folder, "mask.pt") if mask is not None else None,
               "seconds": round(seconds, 1)}
        self.rows[stage.name] = row
        atomic_write_json({"method": self.args.method, "rewind_source": self.args.rewind_source,
                           "combine": self.args.combine, "stages": [self.rows[s.name] for s in self.stages
                                                                     if s.name in self.rows]}, self.summary_path)
        run_dir.mark_done(folder)
        return row

    def bleu(self, checkpoint: str) -> float:
        """Valid BLEU with the scorer results uses (sacreBLEU on detokenized output)."""
        args = argparse.Namespace(generate_command=self.args.generate_command, data=self.args.train_args[0],
                                  subset="valid", beam=self.args.beam, batch_size=self.args.batch_size,
                                  remove_bpe=self.args.remove_bpe, references=None)
        return scoring.generate_and_score(checkpoint, args)["bleu"]


def _dies_with(parent: int):
    """preexec_fn: the child gets SIGTERM when the driver dies, however it dies (Linux prctl)."""
    def set_parent_death_signal():
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the driver died before prctl took effect
            os._exit(1)
    return set_parent_death_signal


def _options(command):
    """'--option' -> value ('' for a flag), positional arguments under their index."""
    found, i = {}, 0
    while i < len(command):
        arg = command[i]
        if arg.startswith("--"):
            has_value = i + 1 < len(command) and not command[i + 1].startswith("--")
            found[arg] = command[i + 1] if has_value else ""
            i += 2 if has_value else 1
        else:
            found[f"argument {i + 1}"] = arg
            i += 1
    return found


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def main(args):
    levels = parse_levels(args.levels)
    validate(args, levels)
    stages = plan_stages(args, levels)
    if not args.dry_run:
        os.makedirs(args.work_dir, exist_ok=True)
        run_dir.lock(args.work_dir, "work dir")
    driver = Driver(args, stages)
    driver.check_settings()
    return driver.run()
