"""fairseq-slt: lottery-ticket pruning for fairseq Transformers (use with ``--user-dir``).

Importing the package registers its task and criterion with fairseq when fairseq is loaded
(as under ``fairseq-train --user-dir``); the pruning math in ``fairseq_slt.pruning`` and the
``fairseq-slt`` tools work without importing fairseq.
"""
import importlib.util
import os
import sys
import warnings

from .pruning.io import allow_fairseq_globals, user_exit

__version__ = "0.2.0"
UNSAFE_LOAD_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

allow_fairseq_globals()  # fairseq's own torch.load (weights_only=True) needs argparse.Namespace


def beside_fairseq():
    """Where fairseq resolves a relative ``--user-dir fairseq_slt``: beside its own package (None: no fairseq)."""
    fairseq = importlib.util.find_spec("fairseq")
    return os.path.join(os.path.dirname(os.path.dirname(fairseq.origin)), "fairseq_slt") if fairseq and \
        fairseq.origin else None


def _one_package_by_every_path() -> None:
    """fairseq's --user-dir check compares the path it is given with this package's ``__path__``, as text: an import
    through the link beside fairseq's package (``link-user-dir``) and then ``user_dir=`` the checkout's folder (or
    the other way round) ended in "not globally unique". Both paths are this package."""
    real = os.path.realpath(__path__[0])
    for path in (real, beside_fairseq()):
        if path and path not in __path__ and os.path.realpath(path) == real:
            __path__.append(path)


_one_package_by_every_path()

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
