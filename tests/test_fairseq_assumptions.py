"""What the plugin assumes of fairseq, one test each: if fairseq changes one of these, a test here fails and
names the workaround in fairseq_slt/fairseq_patches.py (or the glue) that must be revisited."""
import inspect

import numpy as np

import fairseq_slt  # noqa: F401  (with fairseq loaded: installs the patches)
from fairseq import checkpoint_utils, file_io
from fairseq.data import data_utils, iterators
from fairseq.distributed import utils as distributed_utils
from fairseq.models import ema
from fairseq_slt import fairseq_patches
from fairseq_slt.checkpoints import TASK_KEY
from fairseq_slt.tasks.translation_slt import TranslationSLTTask

fairseq_patches.install()  # what importing the plugin does once fairseq is loaded
Trainer = __import__("fairseq.trainer").trainer.Trainer
SAVE_CHECKPOINT = fairseq_patches._fairseq_save_checkpoint  # fairseq's own, under the plugin's hold_best wrapper


def _source(function):
    return inspect.getsource(function)


def test_patches_are_installed_once_on_the_attributes_fairseq_calls():
    fairseq_patches.install()
    fairseq_patches.install()
    assert checkpoint_utils.torch_persistent_save is fairseq_patches.atomic_persistent_save
    assert file_io.PathManager.copy is fairseq_patches.atomic_copy
    assert distributed_utils.call_main is fairseq_patches.checked_call_main
    assert checkpoint_utils.load_model_ensemble_and_task is fairseq_patches.checked_load_ensemble
    assert data_utils.batch_by_size is fairseq_patches.batch_by_size_keeping_the_last
    assert ema.EMA.step is fairseq_patches.ema_step_masked


def test_fairseq_steps_the_ema_average_after_the_tasks_optimizer_step():
    source = _source(Trainer.train_step)
    assert source.index("self.task.optimizer_step(") < source.index("self.ema.step(")
    parameters = list(inspect.signature(fairseq_patches._fairseq_ema_step).parameters)
    assert parameters == ["self", "new_model", "updates"]
    assert "self.fp32_params" in _source(ema.EMA.__init__) and "def get_model" in _source(ema.EMA)


def test_fairseq_saves_one_checkpoint_then_copies_it_with_pathmanager_copy():
    source = _source(SAVE_CHECKPOINT)
    assert "trainer.save_checkpoint(checkpoints[0]" in source and "PathManager.copy(" in source
    assert "checkpoint_utils.torch_persistent_save(" in _source(Trainer.save_checkpoint)
    assert list(inspect.signature(fairseq_patches._fairseq_save).parameters) == ["obj", "filename", "async_write"]
    assert list(inspect.signature(fairseq_patches._fairseq_copy).parameters)[:3] == ["src_path", "dst_path", "overwrite"]


def test_fairseq_spawns_one_process_per_gpu_and_looks_call_main_up_at_call_time():
    source = _source(fairseq_patches._fairseq_call_main)
    assert "nprocs=min(" in source and "torch.cuda.device_count()" in source
    import fairseq_cli.train
    assert "distributed_utils.call_main(cfg, main)" in _source(fairseq_cli.train.cli_main)


def test_fairseq_loads_models_through_the_module_level_function_it_checks_paths_in():
    parameters = inspect.signature(fairseq_patches._fairseq_load_ensemble).parameters
    assert list(parameters)[:1] == ["filenames"] and {"suffix", "num_shards", "state"} <= set(parameters)
    assert "load_model_ensemble_and_task(" in _source(checkpoint_utils.load_model_ensemble)


def test_fairseq_files_task_state_under_the_task_class_name():
    assert TASK_KEY == TranslationSLTTask.__name__
    assert "trainer.task.get_checkpoint_dict()" in _source(SAVE_CHECKPOINT)
    assert "extra_state.get(trainer.task.__class__.__name__" in _source(checkpoint_utils.load_checkpoint)


def test_fairseq_keeps_the_best_loss_in_a_function_attribute():
    source = _source(SAVE_CHECKPOINT)
    # hold_best: the best is updated first, then compared; the attribute is found through the module's name
    assert source.index("save_checkpoint.best = best_function(val_loss, prev_best)") < \
        source.index("is_better(val_loss, save_checkpoint.best)")
    assert SAVE_CHECKPOINT.__globals__ is checkpoint_utils.__dict__
    assert checkpoint_utils.save_checkpoint is fairseq_patches.save_checkpoint_holding_best
    assert "save_checkpoint.best = extra_state[\"best\"]" in _source(checkpoint_utils.load_checkpoint)
    checkpoint_utils.save_checkpoint.best = 1.0
    fairseq_patches.forget_inherited_best()
    assert not hasattr(checkpoint_utils.save_checkpoint, "best")


def test_fairseq_counts_patience_from_a_best_kept_in_a_function_attribute():
    import fairseq_cli.train
    source = _source(fairseq_cli.train.should_stop_early)
    # hold_best: without a best, a validation starts the count afresh (the attribute is found in the module's globals)
    assert 'prev_best = getattr(should_stop_early, "best", None)' in source
    assert "if prev_best is None or is_better(valid_loss, prev_best):" in source
    assert fairseq_cli.train.should_stop_early.__globals__ is fairseq_cli.train.__dict__
    validate_and_save = _source(fairseq_cli.train.validate_and_save)
    assert validate_and_save.index("should_stop_early(cfg") < validate_and_save.index("checkpoint_utils.save_checkpoint(")
    assert list(fairseq_patches._patience_functions()) == [fairseq_cli.train.should_stop_early]
    fairseq_cli.train.should_stop_early.best = 1.0
    fairseq_patches.hold_best(True)
    fairseq_patches.hold_best(False)
    assert not hasattr(fairseq_cli.train.should_stop_early, "best")


def test_fairseq_starts_an_absent_average_from_the_model_it_freed_before():
    # trainer_load_checkpoint: without the workaround, --store-ema and a checkpoint without "ema" end in a KeyError
    source = _source(fairseq_patches._fairseq_trainer_load)
    assert source.index('del state["model"]') < source.index('state["model"], build_fp32_params')
    assert 'if "ema" not in extra_state:' in source
    assert "load_checkpoint_to_cpu(" in source and Trainer.load_checkpoint is fairseq_patches.trainer_load_checkpoint


def test_fairseq_prefetch_threads_have_the_fields_the_exit_hook_drains():
    init = _source(iterators.BackgroundConsumer.__init__)
    assert "self._queue = queue" in init and "self._max_len = max_len" in init
    assert "self._max_len is not None and self.count >= self._max_len" in _source(iterators.BackgroundConsumer.run)


def test_fairseq_broadcasts_a_loaded_checkpoint_through_broadcast_object():
    assert "distributed_utils.broadcast_object(" in _source(fairseq_patches._fairseq_trainer_load)  # fairseq's own
    assert hasattr(distributed_utils, "_TensorPlaceholder")


def test_fairseq_drops_a_last_batch_that_is_not_a_multiple_of_required_batch_size_multiple():
    """fairseq issue #5036, what the plugin's task works around; its batches are consecutive runs of the indices."""
    indices, sizes = np.arange(13, dtype=np.int64), np.full(13, 5, dtype=np.int64)
    batches = fairseq_patches._fairseq_batch_by_size(indices, None, num_tokens_vec=sizes, max_sentences=64,
                                                     required_batch_size_multiple=8)
    assert [b.tolist() for b in batches] == [list(range(8))]
    assert [b.tolist() for b in data_utils.batch_by_size(indices, None, num_tokens_vec=sizes, max_sentences=64,
                                                         required_batch_size_multiple=8)] == [list(range(8))]
    with fairseq_patches.keeping_last_batch(True):
        kept = data_utils.batch_by_size(indices, None, num_tokens_vec=sizes, max_sentences=4,
                                        required_batch_size_multiple=8)
    assert [b.tolist() for b in kept] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
