"""fairseq-slt: lottery-ticket pruning for fairseq Transformers (use with ``--user-dir``).

Importing the package registers its task and criterion with fairseq when fairseq is loaded
(as under ``fairseq-train --user-dir``); the pruning math in ``fairseq_slt.pruning`` and the
``fairseq-slt`` tools work without importing fairseq.
"""
import os
import sys
import warnings

from .pruning.io import allow_fairseq_globals, user_exit

__version__ = "0.2.0"
UNSAFE_LOAD_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

allow_fairseq_globals()  # fairseq's own torch.load (weights_only=True) needs argparse.Namespace

if "fairseq" in sys.modules:
    # fairseq's torch.load calls pass no weights_only, so this variable would make them unpickle anything
    if os.environ.get(UNSAFE_LOAD_VARIABLE, "").strip().lower() in ("1", "y", "yes", "true"):
        raise user_exit(f"{UNSAFE_LOAD_VARIABLE} is set: fairseq would load checkpoints with unsafe unpickling "
                        "(a checkpoint could run code); unset it")
    # fairseq's own config code triggers Hydra's deprecation warnings in every run: not the user's concern
    warnings.filterwarnings("ignore", category=UserWarning, module=r"hydra(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning, message=r"\s*'config' is validated against ConfigStore")
    from . import criterions, fairseq_patches, tasks  # noqa: F401  (registration)

    fairseq_patches.install()
