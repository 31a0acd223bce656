"""The ``translation_slt`` task: fairseq's translation task plus lottery-ticket pruning options."""
import atexit
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II, OmegaConf

from .. import fairseq_patches, sparse_inference
from ..pruning.io import UserError, user_exit
from ..pruning_run import Phase, PruningRun
from ..pruning.methods import help_text
from ..run_options import validate_options
from ..run_dir import LAST

logger = logging.getLogger(__name__)
RESETS = ("reset_optimizer", "reset_lr_scheduler", "reset_meters", "reset_dataloader")


@dataclass
class TranslationSLTConfig(TranslationConfig):
    prune_method: str = field(default="none", metadata={
        "help": help_text()})
    prune_sparsity: float = field(default=0.0, metadata={
        "help": "fraction of each weight matrix to prune, in [0, 1) (the final sparsity s_T for mp)"})
    prune_scope: str = field(default="layer", metadata={
        "help": "layer: every weight matrix reaches the sparsity (paper); global: one threshold for all"})
    prune_pattern: Optional[str] = field(default=None, metadata={
        "help": "N:M (e.g. 2:4): in every group of M consecutive weights along a matrix's input dimension keep the "
                "N largest (--prune-sparsity must be 1-N/M; mp ramps the kept count down to N); default: unstructured"})
    prune_params: Optional[str] = field(default=None, metadata={
        "help": "regex (re.search) narrowing the prunable weight matrices; default: all of dim >= 2"})
    prune_mask_from: Optional[str] = field(default=None, metadata={
        "help": "converged checkpoint whose weight magnitudes give the mask (its own mask stays pruned)"})
    prune_rewind_from: Optional[str] = field(default=None, metadata={
        "help": "checkpoint whose weights the pruned run starts from (theta_0 for lt, theta_k for slt)"})
    prune_initial_sparsity: float = field(default=0.0, metadata={
        "help": "mp: sparsity s_0 at --prune-start (at least the sparsity of the --prune-mask-from mask)"})
    prune_start: int = field(default=0, metadata={"help": "mp: first pruning update t_start"})
    prune_end: int = field(default=0, metadata={"help": "mp: last pruning update t_end; the final sparsity holds after it"})
    prune_frequency: int = field(default=100, metadata={"help": "mp: prune every N updates between start and end"})
    prune_clt_random_signs: bool = field(default=False, metadata={
        "help": "control for clt: random signs (seeded by --prune-seed) instead of sign(theta_k)"})
    prune_random_mask: bool = field(default=False, metadata={
        "help": "control for lt/slt/clt: a random mask (seeded) with the same per-layer sparsity"})
    prune_reinit: bool = field(default=False, metadata={
        "help": "control for lt/slt/clt: start from a fresh fairseq initialisation (seeded) instead of the rewind point"})
    prune_seed: int = field(default=1, metadata={"help": "seed of the random controls"})
    prune_dense_gradients: bool = field(default=False, metadata={
        "help": "keep the gradients of pruned weights and zero only the weights after each step (faster: "
                "dense optimizer state); the same training with Adam or SGD and --clip-norm 0. Default: zeroed "
                "before clipping and the step, so they count in no norm or optimizer state"})
    save_rewind_points: Optional[str] = field(default=None, metadata={
        "help": "comma-separated updates, e.g. 0,400: save the weights before update 1 (0) and right after "
                "update K as checkpoint_rewind_K.pt in the save dir"})
    sparse_inference: bool = field(default=False, metadata={
        "help": "fairseq-generate/interactive: run pruned linear layers (at least half zeros) as CSR matmuls "
                "where a timing on first use finds them faster than dense, per layer shape, input rows and "
                "thread count (CPU only)"})
    # read from fairseq's other option groups
    max_update: int = II("optimization.max_update")
    save_dir: str = II("checkpoint.save_dir")
    restore_file: str = II("checkpoint.restore_file")
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
            if self.pruning.resumed_from == self.pruning.own_last:
                self._resume_own_checkpoint()
        return model

    def dictionary_digest(self) -> str:
        """Identifies the source and target dictionaries (entries and order, not only their sizes)."""
        digest = hashlib.sha256()
        for dictionary in (self.src_dict, self.tgt_dict):
            digest.update("\n".join(dictionary.symbols).encode() + b"\0")
        return digest.hexdigest()[:16]

    def _resume_own_checkpoint(self) -> None:
        """A rerun of a command with --restore-file OTHER resumes this run's own checkpoint_last.pt, with its
        optimizer, schedule, data position and best loss (fairseq would load OTHER again and start over)."""
        root = self.cfg._get_root() if OmegaConf.is_config(self.cfg) else None
        checkpoint = getattr(root, "checkpoint", None)
        if checkpoint is None or checkpoint.restore_file == LAST:
            return
        logger.info(f"resuming this run's own {LAST} (--restore-file {checkpoint.restore_file} only started it)")
        checkpoint.restore_file = LAST
        for reset in RESETS:
            setattr(checkpoint, reset, False)

    def _full_config(self) -> dict:
        """The whole training configuration, as fairseq stores it in checkpoints."""
        root = self.cfg._get_root() if OmegaConf.is_config(self.cfg) else self.cfg
        return OmegaConf.to_container(root, resolve=True, enum_to_str=True)

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
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def optimizer_step(self, optimizer, model, update_num):
        super().optimizer_step(optimizer, model, update_num)
        if self.pruning is not None:
            try:
                self.pruning.after_step(update_num)
            except UserError as err:
                raise _user_error(err) from None

    def build_generator(self, models, args, **kwargs):
        if self.cfg.sparse_inference:
            self._sparsify(models)
        return super().build_generator(models, args, **kwargs)

    def _sparsify(self, models) -> None:
        if any(p.device.type != "cpu" for model in models for p in model.parameters()):
            raise user_exit("--sparse-inference runs on CPU only (add --cpu)")
        plan = sparse_inference.Plan()
        atexit.register(lambda: [logger.info(f"--sparse-inference: {line}") for line in plan.summary()])
        for model in models:
            replaced = sparse_inference.sparsify(model, plan)
            logger.info(f"--sparse-inference: {len(replaced)} linear layers with at least "
                        f"{100 * sparse_inference.MIN_SPARSITY:g} % zeros get a CSR copy; dense or sparse is "
                        "timed per shape, input rows and threads on first use")

    # resume: fairseq stores this dict in the checkpoint's extra_state under the class name
    def get_checkpoint_dict(self):
        return {self.__class__.__name__: self.pruning.checkpoint_dict()} if self.pruning is not None else {}

    def set_checkpoint_dict(self, state):
        if self.pruning is not None and state:
            self.pruning.load_checkpoint_dict(state)
