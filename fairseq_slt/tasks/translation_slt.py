"""The ``translation_slt`` task: fairseq's translation task plus lottery-ticket pruning options."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II, OmegaConf

from ..pruning import PruningError
from ..pruning_run import METHODS, PruningRun, validate_options


@dataclass
class TranslationSLTConfig(TranslationConfig):
    prune_method: str = field(default="none", metadata={
        "help": f"pruning method: {', '.join(METHODS)} (none trains densely)"})
    prune_sparsity: float = field(default=0.0, metadata={
        "help": "fraction of each weight matrix to prune, in [0, 1) (final sparsity for mp)"})
    prune_scope: str = field(default="layer", metadata={
        "help": "layer: every weight matrix reaches the sparsity (paper); global: one threshold for all"})
    prune_params: Optional[str] = field(default=None, metadata={
        "help": "regex (re.search) narrowing the prunable weight matrices; default: all of dim >= 2"})
    prune_mask_from: Optional[str] = field(default=None, metadata={
        "help": "converged checkpoint whose weight magnitudes give the mask (its own mask stays pruned)"})
    prune_rewind_from: Optional[str] = field(default=None, metadata={
        "help": "checkpoint whose weights the pruned run starts from (theta_0 for lt, theta_k for slt)"})
    save_rewind_points: Optional[str] = field(default=None, metadata={
        "help": "comma-separated updates, e.g. 0,400: save the weights before update 1 (0) and right after "
                "update K as checkpoint_rewind_K.pt in the save dir"})
    # read from fairseq's other option groups
    max_update: int = II("optimization.max_update")
    save_dir: str = II("checkpoint.save_dir")
    distributed_rank: int = II("distributed_training.distributed_rank")


def _user_error(err: PruningError) -> SystemExit:
    return SystemExit(f"fairseq-slt: error: {err}")


@register_task("translation_slt", dataclass=TranslationSLTConfig)
class TranslationSLTTask(TranslationTask):
    """Translation with masks from a converged checkpoint, rewinding, and enforced sparsity."""

    cfg: TranslationSLTConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.pruning: Optional[PruningRun] = None

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        if not kwargs.get("from_checkpoint"):
            try:
                validate_options(cfg)
            except PruningError as err:
                raise _user_error(err) from None
        return super().setup_task(cfg, **kwargs)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not from_checkpoint:
            try:
                self.pruning = PruningRun(self.cfg, model, self._full_config)
            except PruningError as err:
                raise _user_error(err) from None
        return model

    def _full_config(self) -> dict:
        """The whole training configuration, as fairseq stores it in checkpoints."""
        root = self.cfg._get_root() if OmegaConf.is_config(self.cfg) else self.cfg
        return OmegaConf.to_container(root, resolve=True, enum_to_str=True)

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if self.pruning is not None:
            self.pruning.epoch = epoch

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if self.pruning is not None:
            self.pruning.start(update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def optimizer_step(self, optimizer, model, update_num):
        super().optimizer_step(optimizer, model, update_num)
        if self.pruning is not None:
            self.pruning.after_step(update_num)

    # resume: fairseq stores this dict in the checkpoint's extra_state under the class name
    def get_checkpoint_dict(self):
        return {self.__class__.__name__: self.pruning.checkpoint_dict()} if self.pruning is not None else {}

    def set_checkpoint_dict(self, state):
        if self.pruning is not None and state:
            self.pruning.load_checkpoint_dict(state)
