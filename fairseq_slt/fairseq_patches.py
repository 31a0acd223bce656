"""Every place the plugin works around fairseq itself, installed once by ``install()`` when fairseq loads
the plugin (fairseq's files are never changed: the module attributes fairseq calls are wrapped).
``tests/test_fairseq_assumptions.py`` fails if fairseq changes a behaviour one of these relies on.

- ``checkpoint_utils.load_checkpoint_to_cpu``: compact files load directly (``compact_loading``).
- ``file_io.PathManager.copy``: fairseq saves one checkpoint (``checkpoint_best.pt`` or an interval one)
  atomically and then *copies* it to the others (``checkpoint_last.pt``) with ``shutil.copyfile``, which
  truncates the target first and writes through a symlink: a full disk mid-copy left a truncated
  ``checkpoint_last.pt`` and an unresumable run, and a planted link changed a file outside the save dir.
  The copy is made beside the target, flushed, and renamed over it: the target is the old file or the
  new one, whole, and a link is replaced, never written through.
- ``checkpoint_utils.torch_persistent_save``: fairseq writes ``NAME.tmp`` (through a link planted there),
  does not flush it to disk, and on a failure retries twice, 2.5 s apart. The plugin's atomic save
  replaces it: a temporary file of its own beside ``NAME``, flushed, renamed; removed on any failure.
- ``distributed.utils.call_main``: with several processes and no GPU, fairseq spawns min(GPUs, world size)
  = 0 processes and exits 0 having trained nothing (or fails an assertion when it has no init method).
  Refused in one line: on CPU, each rank is its own process (--distributed-no-spawn; ``fairseq-slt launch``).
- ``checkpoint_utils.load_model_ensemble_and_task``: a --path that is missing or not a file ends in an
  IOError traceback (fairseq-generate, -interactive): one line instead.
- ``distributed.utils.broadcast_object`` (``broadcast_fix``): rank 0 broadcasts a loaded checkpoint with
  torch.save/load, which weights-only loading refuses on the other ranks: omegaconf's containers are
  allowed while it is received.
- fairseq's batch-prefetch threads (``clean_exit``): torn down inside a torch op at exit, they abort a
  finished run (status -6); an exit hook lets them return first.
- ``checkpoint_utils.save_checkpoint.best`` (``forget_inherited_best``): fairseq keeps the best validation
  loss in a function attribute, which a run started from another run's checkpoint inherits.
- ``checkpoint_utils.save_checkpoint`` (``hold_best``): while a pruning schedule has not reached its final
  sparsity, no validation may make ``checkpoint_best.pt`` (MP's best loss came before the model was as
  sparse as asked: an "MP 90 %" best at 73 %); from the update that reaches it, the best starts afresh.
- fairseq-train's ``should_stop_early`` (``--patience``), likewise: it keeps its best loss and count in function
  attributes, and pruning makes each validation worse, so an "MP 98 %" run with ``--patience 1`` stopped at
  69 %. While the schedule holds the best, each validation is the first; the count starts at its target.
- ``models.ema.EMA.step`` (``--store-ema``): fairseq's average of the weights is another copy of them, stepped after
  every update; the training task's hook (``average_hook``) zeroes its pruned positions after each step.
- ``trainer.Trainer.load_checkpoint`` with ``--store-ema``: a checkpoint without an average (another run's, e.g. a
  dense one to prune with --restore-file) ended in fairseq's ``KeyError: 'model'`` (it starts the average from the
  checkpoint's weights after freeing them): ``compact_loading.seeding_average`` hands them over first.
- ``argparse.ArgumentParser.error`` for fairseq's own parsers (``prog`` fairseq-*): a usage error (an
  unknown --prune-method among them) printed fairseq's whole usage, dozens of lines, before the error:
  the error's one line instead, as the plugin's own refusals.
- ``data.data_utils.batch_by_size``: fairseq drops the last batch when its size is not a multiple of
  ``--required-batch-size-multiple`` (8 by default; fairseq issue #5036): ``fairseq-generate --batch-size 1``
  left the last sentence of every test set untranslated, and 13 sentences at --batch-size 64 gave 8. Under
  the plugin's task (``keeping_last_batch``) that batch is kept for every split but the training one, whose
  batches stay fairseq's (a resumed run finds the batches it left).
- fairseq files a task's state in checkpoints under the task's class name (``checkpoints.TASK_KEY``).
- ``search.DiverseBeamSearch`` (``--diverse-beam-groups``) keeps each sentence's group overlap in a tensor of
  the batch's size, which fairseq's generator indexes by the dataset's ids (``sample["id"]``): an IndexError
  for the first batch holding an id past its size. Under the plugin's task (``diverse_search_sample``) it
  gets each sentence's position in the batch instead.
Not installed here but by the task itself: its ``inference_step`` turns on, for one beam search, the beamable
encoder-decoder attention that fairseq's transformer lacks (``beamable_attention``), a list of the decoder's
reordering modules in place of fairseq's walk over all of them at every step (``listed_reorder``), the encoder
output copied only where sentences leave the batch (``encoder_reorder``), and fairseq's generation loop, decoder
step and beam search step without their costliest passes over the vocabulary (``vocab_passes``).
"""
import argparse
import contextlib
import inspect
import logging
import os
import sys

import numpy as np
import torch
from fairseq import checkpoint_utils, file_io, trainer
from fairseq.data import data_utils
from fairseq.distributed import utils as distributed_utils
from fairseq.models import ema
from fairseq.search import DiverseBeamSearch

from . import broadcast_fix, clean_exit, compact_loading
from .pruning import UserError
from .pruning.io import atomic_save, atomic_write_stream, usage_exit, user_exit
from .checkpoints import check_dictionaries, dictionary_digest

logger = logging.getLogger(__name__)

_fairseq_copy = None
_fairseq_save = None
_fairseq_call_main = None
_fairseq_load_ensemble = None
_argparse_error = None
_fairseq_save_checkpoint = None
_fairseq_batch_by_size = None
_keep_last_batch = False
_best_held = False
_fairseq_ema_step = None
_fairseq_trainer_load = None
average_hook = None  # set by a training run of the plugin's task: called with fairseq's EMA after each of its steps


def install() -> None:
    global _fairseq_copy, _fairseq_save, _fairseq_call_main, _fairseq_load_ensemble, _argparse_error
    global _fairseq_save_checkpoint, _fairseq_batch_by_size, _fairseq_ema_step, _fairseq_trainer_load
    compact_loading.install()
    broadcast_fix.install()
    clean_exit.install()
    if _fairseq_copy is None:
        _fairseq_copy = file_io.PathManager.copy
        file_io.PathManager.copy = staticmethod(atomic_copy)
    if _fairseq_save is None:
        _fairseq_save = checkpoint_utils.torch_persistent_save
        checkpoint_utils.torch_persistent_save = atomic_persistent_save
    if _fairseq_call_main is None:
        _fairseq_call_main = distributed_utils.call_main
        distributed_utils.call_main = checked_call_main
    if _fairseq_load_ensemble is None:
        _fairseq_load_ensemble = checkpoint_utils.load_model_ensemble_and_task
        checkpoint_utils.load_model_ensemble_and_task = checked_load_ensemble
    if _fairseq_save_checkpoint is None:  # fairseq's function finds its .best through this module name: ours
        _fairseq_save_checkpoint = checkpoint_utils.save_checkpoint
        checkpoint_utils.save_checkpoint = save_checkpoint_holding_best
    if _argparse_error is None:
        _argparse_error = argparse.ArgumentParser.error
        argparse.ArgumentParser.error = one_line_usage_error
    if _fairseq_batch_by_size is None:
        _fairseq_batch_by_size = data_utils.batch_by_size
        data_utils.batch_by_size = batch_by_size_keeping_the_last
    if _fairseq_ema_step is None:
        _fairseq_ema_step = ema.EMA.step
        ema.EMA.step = ema_step_masked
    if _fairseq_trainer_load is None:
        _fairseq_trainer_load = trainer.Trainer.load_checkpoint
        trainer.Trainer.load_checkpoint = trainer_load_checkpoint


def trainer_load_checkpoint(self, filename, *args, **kwargs):
    if not self.cfg.ema.store_ema:
        return _fairseq_trainer_load(self, filename, *args, **kwargs)
    with compact_loading.seeding_average():
        extra_state = _fairseq_trainer_load(self, filename, *args, **kwargs)
    if isinstance(extra_state, dict) and extra_state.pop(compact_loading.SEEDED, False):
        del extra_state["ema"]  # the checkpoint's weights: not kept for the whole run (fairseq-train holds this dict)
        logger.info("--store-ema: the restored checkpoint holds no average; it starts from the checkpoint's weights")
    return extra_state


def ema_step_masked(self, new_model, updates=None):
    result = _fairseq_ema_step(self, new_model, updates)
    if average_hook is not None:
        average_hook(self)
    return result


def one_line_usage_error(parser: argparse.ArgumentParser, message: str):
    if not str(parser.prog).startswith("fairseq-"):  # parsers other than fairseq's: as they were
        return _argparse_error(parser, message)
    usage_exit(parser, message)


def checked_load_ensemble(filenames, *args, **kwargs):
    given = inspect.signature(_fairseq_load_ensemble).bind(filenames, *args, **kwargs).arguments
    plain = not given.get("suffix") and int(given.get("num_shards") or 1) == 1 and given.get("state") is None
    for filename in filenames if plain else []:  # sharded names are fairseq's to resolve
        if not _remote(filename) and not os.path.isfile(filename):
            raise user_exit(f"--path checkpoint {filename} is not a file" if os.path.exists(filename)
                            else f"--path checkpoint not found: {filename}")
    loaded = _fairseq_load_ensemble(filenames, *args, **kwargs)
    here = _data_digest(loaded[2])
    for filename in filenames:  # the digest each file's run recorded, kept by compact_loading as it was read
        try:
            check_dictionaries(f"checkpoint {filename}", compact_loading.TRAINED_WITH.get(filename), here)
        except UserError as err:
            raise user_exit(str(err)) from None
    return loaded


def _data_digest(task):
    """The task's dictionaries' digest; None for a task without a source and a target dictionary (fairseq's
    base task has None for both, a language-model task None for the source)."""
    dictionaries = getattr(task, "source_dictionary", None), getattr(task, "target_dictionary", None)
    return dictionary_digest(*dictionaries) if all(d is not None for d in dictionaries) else None  # no "in": __eq__


def forget_inherited_best() -> None:
    """A new run tracks its own best loss, not one inherited from a --restore-file of another run."""
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best


def hold_best(held: bool) -> None:
    """``held``: the pruning schedule has not reached its final sparsity, so no validation is a best yet.
    Released (or resumed past the schedule with the hold still in the checkpoint): the best starts afresh."""
    global _best_held
    inherited = getattr(checkpoint_utils.save_checkpoint, "best", None)
    if not held and (_best_held or inherited in (float("inf"), float("-inf"))):
        forget_inherited_best()
    if held or _best_held:  # --patience: no validation counts before the target, the count starts at it
        for function in _patience_functions():
            function.__dict__.pop("best", None)
    _best_held = held


def stopped_by_patience(patience: int) -> bool:
    """Whether fairseq-train's --patience has just ended the run: it decides before the save it ends with."""
    return patience > 0 and any(getattr(function, "num_runs", 0) >= patience for function in _patience_functions())


def _patience_functions():
    """fairseq-train's ``should_stop_early``, from whichever module runs train.py (``__main__`` under python -m)."""
    for name in ("fairseq_cli.train", "__main__"):
        function = getattr(sys.modules.get(name), "should_stop_early", None)
        code = getattr(function, "__code__", None)
        if code is not None and code.co_filename.endswith(os.path.join("fairseq_cli", "train.py")):
            yield function


def save_checkpoint_holding_best(cfg, trainer, epoch_itr, val_loss):
    if _best_held:  # a best no loss can beat, in the metric's direction (a float: checkpoints keep it)
        checkpoint_utils.save_checkpoint.best = float("inf" if cfg.maximize_best_checkpoint_metric else "-inf")
    return _fairseq_save_checkpoint(cfg, trainer, epoch_itr, val_loss)


def diverse_search_sample(generator, sample: dict) -> dict:
    """The sample to generate from: for a DiverseBeamSearch, with each sentence's position in the batch as its
    id, the index its group overlap has (fairseq's generator reads the ids for the search's steps only; the
    caller keeps its sample, ids and all); otherwise the sample itself."""
    ids = sample.get("id")
    if not isinstance(getattr(generator, "search", None), DiverseBeamSearch) or not torch.is_tensor(ids):
        return sample
    return {**sample, "id": torch.arange(ids.numel(), device=ids.device)}


@contextlib.contextmanager
def keeping_last_batch(keep: bool):
    """Batches made meanwhile keep the last batch fairseq would drop (``keep``), or are fairseq's."""
    global _keep_last_batch
    before, _keep_last_batch = _keep_last_batch, keep
    try:
        yield
    finally:
        _keep_last_batch = before


def batch_by_size_keeping_the_last(indices, *args, **kwargs):
    """fairseq's batches, and the last one it drops for not being a multiple of required_batch_size_multiple:
    its batches are consecutive runs of ``indices``, so the indices past them are that batch."""
    if not _keep_last_batch:
        return _fairseq_batch_by_size(indices, *args, **kwargs)
    # an array before fairseq's call (which would use up an iterator, leaving nothing to find the last batch in)
    indices = indices if isinstance(indices, np.ndarray) else np.fromiter(indices, dtype=np.int64, count=-1)
    batches = _fairseq_batch_by_size(indices, *args, **kwargs)
    covered = sum(len(batch) for batch in batches)
    if covered < len(indices) and inspect.signature(_fairseq_batch_by_size).bind(
            indices, *args, **kwargs).arguments.get("fixed_shapes") is None:
        batches = list(batches) + [indices[covered:]]
    return batches


def checked_call_main(cfg, main, **kwargs):
    setting = cfg.distributed_training
    if int(setting.distributed_world_size or 1) > 1 and torch.cuda.device_count() == 0:
        if setting.distributed_init_method is None:
            try:  # what fairseq does first: torchrun's or Slurm's variables make each process one rank
                distributed_utils.infer_init_method(setting)
            except AssertionError:
                pass
        if not setting.distributed_no_spawn:
            raise user_exit(f"--distributed-world-size {setting.distributed_world_size} without a GPU: fairseq "
                            "would start no process and train nothing; run one process per rank with "
                            f"--distributed-no-spawn (fairseq-slt launch --nproc {setting.distributed_world_size} "
                            "--master 127.0.0.1:PORT -- ... does)")
    return _fairseq_call_main(cfg, main, **kwargs)


def atomic_persistent_save(obj, filename: str, async_write: bool = False) -> None:
    if async_write or _remote(filename):  # fairseq's asynchronous or remote writers: theirs
        return _fairseq_save(obj, filename, async_write)
    atomic_save(obj, filename)


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    if _remote(src_path) or _remote(dst_path):  # remote storage through iopath: its own copy
        return _fairseq_copy(src_path, dst_path, overwrite)
    if os.path.lexists(dst_path) and not overwrite:
        return False
    with open(src_path, "rb") as source:  # the plugin's own atomic write: beside, flushed, renamed
        atomic_write_stream(source, dst_path)
    return True


def _remote(path: str) -> bool:
    return "://" in str(path)  # iopath's URLs (s3://, manifold://); a local path is ours whether iopath is there or not
