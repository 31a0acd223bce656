"""fairseq reads compact checkpoints (``fairseq-slt compress``) directly: ``--path compact.pt``.

Every fairseq tool (generate, interactive, validate, a --restore-file) loads checkpoints through
``checkpoint_utils.load_checkpoint_to_cpu``.  Installed by the plugin's import, this wraps it: a
compact file is expanded in memory (checksum verified, the same weights-only load as every other file)
and post-processed as fairseq does; any other file goes to fairseq's own function unchanged.
"""
import contextlib

from fairseq import checkpoint_utils
from fairseq.dataclass.utils import overwrite_args_by_name
from fairseq.file_io import PathManager
from omegaconf import OmegaConf

from .pruning.io import UserError, safe_load, user_exit
from .checkpoints import Checkpoint, from_compact
from .pruning.compact import is_compact

_fairseq_load = None
TRAINED_WITH = {}  # path -> the dictionaries' digest its run recorded (None: not recorded), from its last load
_seeding_average = False
SEEDED = "slt_average_seeded"  # extra_state key: the "ema" entry is the checkpoint's model, put there on loading


@contextlib.contextmanager
def seeding_average():
    """While a trainer with --store-ema loads a checkpoint that holds no average: its model is handed over as the
    average too (fairseq means to start the average from those weights, but reads them after freeing them)."""
    global _seeding_average
    _seeding_average = True
    try:
        yield
    finally:
        _seeding_average = False


def _seed_average(state: dict) -> dict:
    extra = state.get("extra_state")
    if _seeding_average and isinstance(extra, dict) and "ema" not in extra and isinstance(state.get("model"), dict):
        extra["ema"], extra[SEEDED] = state["model"], True
    return state


def install() -> None:
    global _fairseq_load
    if _fairseq_load is None:
        _fairseq_load = checkpoint_utils.load_checkpoint_to_cpu
        checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    local = PathManager.get_local_path(path)
    try:
        try:
            state = safe_load(local, "checkpoint", mmap=True)  # cheap: tensors stay on disk until used
        except UserError:
            state = safe_load(local, "checkpoint")  # files in torch's legacy (non-zip) format cannot be mapped
        if not is_compact(state):
            # its model is a dict of tensors, its extra_state a dict
            TRAINED_WITH[path] = Checkpoint(path, "checkpoint", state=state).dictionaries
            if not isinstance(state.get("cfg"), dict) and state.get("args") is None:
                raise UserError(f"checkpoint {path} is not a fairseq checkpoint (it records no configuration)")
            return _seed_average(_fairseq_load(path, arg_overrides, load_on_all_ranks))
        state = from_compact(state, f"compact checkpoint {path}")
        TRAINED_WITH[path] = Checkpoint(path, "checkpoint", state=state).dictionaries
    except UserError as err:
        raise user_exit(err) from None
    # what fairseq's load_checkpoint_to_cpu does after torch.load
    if state.get("args") is not None and arg_overrides is not None:
        for name, value in arg_overrides.items():
            setattr(state["args"], name, value)
    if state.get("cfg") is not None:
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides is not None:
            overwrite_args_by_name(state["cfg"], arg_overrides)
    return _seed_average(checkpoint_utils._upgrade_state_dict(state))
