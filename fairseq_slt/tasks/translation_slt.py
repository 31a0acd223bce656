"""The ``translation_slt`` task: fairseq's translation task plus lottery-ticket pruning options."""
import atexit
import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II, OmegaConf

from .. import aligned_hypotheses, beamable_attention, encoder_reorder, fairseq_patches, lean_decoder_step, \
    listed_reorder, sparse_inference, step_trial, vocab_passes
from ..pruning.io import UserError, user_exit
from ..run import Phase, PruningRun
from ..pruning.methods import NAMES
from ..run.options import PruningOptions, check_epoch_bound, epoch_updates, validate_options
from ..run.folder import LAST
from ..checkpoints import dictionary_digest

logger = logging.getLogger(__name__)
RESETS = ("reset_optimizer", "reset_lr_scheduler", "reset_meters", "reset_dataloader")
GENERATING = threading.RLock()  # held by a generation under the plugin's task (and while models are made sparse)
STATS = ("slt_weights", "slt_zeros", "slt_masked_nonzero", "slt_reports")  # PruningRun.stats() in logging outputs


@dataclass
class TranslationSLTConfig(TranslationConfig, PruningOptions):
    """fairseq's translation options plus ``PruningOptions`` (declared in ``run/options.py``, without fairseq)."""
    prune_method: ChoiceEnum(NAMES) = field(  # a fairseq choice: argparse refuses any other name
        default="none", metadata=PruningOptions.__dataclass_fields__["prune_method"].metadata)
    # read from fairseq's other option groups
    max_update: int = II("optimization.max_update")
    save_dir: str = II("checkpoint.save_dir")
    no_save: bool = II("checkpoint.no_save")
    checkpoint_suffix: str = II("checkpoint.checkpoint_suffix")
    restore_file: str = II("checkpoint.restore_file")
    finetune_from_model: Optional[str] = II("checkpoint.finetune_from_model")
    distributed_rank: int = II("distributed_training.distributed_rank")
    distributed_world_size: int = II("distributed_training.distributed_world_size")
    ddp_backend: str = II("distributed_training.ddp_backend")
    cpu: bool = II("common.cpu")
    seed: int = II("common.seed")
    log_interval: int = II("common.log_interval")


def _user_error(err: UserError) -> SystemExit:
    return user_exit(err)


@register_task("translation_slt", dataclass=TranslationSLTConfig)
class TranslationSLTTask(TranslationTask):
    """Translation with masks from a converged checkpoint, rewinding, and enforced sparsity."""

    cfg: TranslationSLTConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.pruning: Optional[PruningRun] = None
        self.sparse_models = weakref.WeakSet()  # models --sparse-inference made sparse already

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        fairseq_patches.install()  # installed at import already; here too for a task built by other code
        if not kwargs.get("from_checkpoint"):
            try:
                validate_options(cfg)
            except UserError as err:
                raise _user_error(err) from None
        return super().setup_task(cfg, **kwargs)

    def build_model(self, cfg, from_checkpoint=False):
        if self.cfg.sparse_inference and not from_checkpoint:
            raise user_exit("--sparse-inference is an option of fairseq-generate and fairseq-interactive, not of "
                            "training")
        model = super().build_model(cfg, from_checkpoint)
        if not from_checkpoint:
            fresh_init = None
            if self.cfg.prune_reinit:  # fairseq's own initialisation, seeded by --prune-seed
                with torch.random.fork_rng():
                    torch.manual_seed(self.cfg.prune_seed)
                    fresh_init = super().build_model(cfg, from_checkpoint).state_dict()
            try:
                self.pruning = PruningRun(self.cfg, model, self._full_config, fresh_init, self.dictionary_digest())
            except UserError as err:
                raise _user_error(err) from None
            fairseq_patches.average_hook = self.pruning.after_average_step  # --store-ema: masked like the model
            if self.pruning.resumed_from == self.pruning.own_last:
                self._resume_own_checkpoint()
        return model

    def dictionary_digest(self) -> str:
        """Identifies the source and target dictionaries (entries and order, not only their sizes)."""
        return dictionary_digest(self.src_dict, self.tgt_dict)

    def _resume_own_checkpoint(self) -> None:
        """A rerun of a command with --restore-file OTHER resumes this run's own checkpoint_last.pt, with its
        optimizer, schedule, data position and best loss (fairseq would load OTHER again and start over)."""
        checkpoint = getattr(self._root(), "checkpoint", None)
        if checkpoint is None or checkpoint.restore_file == LAST:
            return
        logger.info(f"resuming this run's own {LAST} (--restore-file {checkpoint.restore_file} only started it)")
        checkpoint.restore_file = LAST
        for reset in RESETS:
            setattr(checkpoint, reset, False)

    def _full_config(self) -> dict:
        """The whole training configuration, as fairseq stores it in checkpoints."""
        root = self._root()
        return OmegaConf.to_container(self.cfg if root is None else root, resolve=True, enum_to_str=True)

    def _root(self):
        """The whole fairseq configuration this task's options are part of (None for options built alone)."""
        return self.cfg._get_root() if OmegaConf.is_config(self.cfg) else None

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if self.pruning is not None:
            self.pruning.epoch = epoch

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        try:
            started = self.pruning.start(update_num, optimizer) if self.pruning is not None else None
        except UserError as err:
            raise _user_error(err) from None
        if started is Phase.NEW:
            fairseq_patches.forget_inherited_best()
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad)
        return loss, sample_size, self._with_stats(logging_output, training=True)

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        return loss, sample_size, self._with_stats(logging_output, training=False)

    # sparsity and masked_nonzero in the log lines, under any --criterion
    def _with_stats(self, logging_output: dict, training: bool) -> dict:
        if self.pruning is not None:
            logging_output.update(self.pruning.stats(training=training))
        return logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        # counts are summed over workers and micro-batches; the ratios below undo that exactly
        sums = {key: sum(log.get(key, 0) for log in logging_outputs) for key in STATS}
        if sums["slt_weights"] > 0:
            metrics.log_scalar("sparsity", sums["slt_zeros"] / sums["slt_weights"], weight=0, round=4, priority=800)
            metrics.log_scalar("masked_nonzero", sums["slt_masked_nonzero"] / max(sums["slt_reports"], 1),
                               weight=0, round=2, priority=810)

    def optimizer_step(self, optimizer, model, update_num):
        super().optimizer_step(optimizer, model, update_num)
        if self.pruning is not None:
            try:
                self.pruning.after_step(update_num)
            except UserError as err:
                raise _user_error(err) from None
            fairseq_patches.hold_best(not self.pruning.schedule.reached(update_num + 1))

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # every sentence of a test or validation split, not all but a last batch fairseq drops (fairseq_patches)
        training = dataset is self.datasets.get(self.cfg.train_subset)  # --train-subset: "train" by default
        with fairseq_patches.keeping_last_batch(not training):
            batches = super().get_batch_iterator(dataset, *args, **kwargs)
        if training and self.pruning is not None:
            self._check_epoch_bound(len(batches))
        return batches

    def _check_epoch_bound(self, batches: int) -> None:
        """With --max-epoch, the run's last update is known once its batches are: before training starts."""
        optimization = getattr(self._root(), "optimization", None)
        epochs = int(getattr(optimization, "max_epoch", 0) or 0)
        if not epochs or len(utils.split_paths(self.cfg.data)) > 1:  # data shards: epochs of other sizes
            return
        last = epoch_updates(batches, epochs, list(optimization.update_freq), optimization.skip_remainder_batch)
        max_update = int(self.cfg.max_update or 0)
        if max_update and max_update <= last:
            return  # --max-update ends the run first: checked with the options
        try:
            check_epoch_bound(self.cfg, last, f"--max-epoch {epochs} of {batches} batches each" + (
                f", --update-freq {','.join(map(str, optimization.update_freq))}"
                if any(f != 1 for f in optimization.update_freq) else ""))
        except UserError as err:
            raise _user_error(err) from None

    def build_generator(self, models, args, **kwargs):
        if self.cfg.sparse_inference:
            with GENERATING:
                self._sparsify(models)
        return aligned_hypotheses.aligning(super().build_generator(models, args, **kwargs))

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        sample = fairseq_patches.diverse_search_sample(generator, sample)
        # the contexts below set state on the shared models for one generation: one generation at a time (two
        # threads of a hub model, one setting the beamable attention's beam size, ended in an IndexError)
        with GENERATING, beamable_attention.generating(generator, models, sample), \
                listed_reorder.generating(models), encoder_reorder.generating(generator, models), \
                lean_decoder_step.generating(models), vocab_passes.generating(generator):
            return super().inference_step(generator, models, sample, prefix_tokens, constraints)

    def _sparsify(self, models) -> None:
        # fairseq's hub interface (translate, generate) builds a generator per call: each model is made sparse,
        # and its steps wrapped for the trial, once (wrapped again per call, the 200th call ended in a RecursionError)
        named = [(f"model {index} " if len(models) > 1 else "", model) for index, model in enumerate(models)
                 if model not in self.sparse_models]
        models = [model for _, model in named]
        if not models:
            return
        if any(p.device.type != "cpu" for model in models for p in model.parameters()):
            raise user_exit("--sparse-inference runs on CPU only (add --cpu)")
        other = sorted({str(p.dtype).replace("torch.", "") for model in models for p in model.parameters()
                        if p.dtype not in sparse_inference.CSR_DTYPES})
        if other:  # fairseq-generate --fp16/--bf16 halved the model: torch's CSR product has no such kernels
            raise user_exit(f"--sparse-inference has no CSR product for {', '.join(other)} weights "
                            "(drop --fp16 / --bf16: it runs float32 models)")
        plan = sparse_inference.Plan()
        trial = step_trial.StepTrial(plan)
        atexit.register(lambda: [logger.info(f"--sparse-inference: {line}")
                                 for line in plan.summary() + trial.summary()])
        for prefix, model in named:
            replaced = sparse_inference.sparsify(model, plan, trial=trial, prefix=prefix)
            self.sparse_models.add(model)
            logger.info(f"--sparse-inference: {len(replaced)} linear layers with at least "
                        f"{100 * sparse_inference.MIN_SPARSITY:g} % zeros get a CSR copy; dense or sparse is "
                        "timed per shape, input rows and threads on first use, then checked by whole encoder "
                        "and decoder steps against dense (dense where they are not faster)")

    # resume: fairseq stores this dict in the checkpoint's extra_state under the class name
    def get_checkpoint_dict(self):
        if self.pruning is None:
            return {}
        state = self.pruning.checkpoint_dict()
        patience = int(getattr(getattr(self._root(), "checkpoint", None), "patience", 0) or 0)
        if fairseq_patches.stopped_by_patience(patience):  # this save is the run's last: results counts it finished
            state["stopped"] = "patience"
        return {self.__class__.__name__: state}

    def set_checkpoint_dict(self, state):
        if self.pruning is not None and state:
            self.pruning.load_checkpoint_dict(state)
