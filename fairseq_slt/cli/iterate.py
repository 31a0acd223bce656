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
import time

from ..run import folder as run_dir
from ..checkpoints import Checkpoint, rewind_point_path
from ..pruning import UserError, atomic_write_json
from ..pruning.methods import TABLE
from . import scoring
from . import iterate_options
from .iterate_options import parse_levels, validate
from .stages import Stage, plan_stages

add_arguments = iterate_options.add_arguments  # fairseq-slt's subcommand table reads it here
PLUGIN_ARGS = (("--task", "translation_slt"), ("--criterion", "label_smoothed_cross_entropy_slt"))
USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_FILE = "stage.json"  # the command a stage was made with (without --train-command)
PR_SET_PDEATHSIG = 1


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
