"""fairseq-slt: lottery-ticket pruning for fairseq Transformers (use with ``--user-dir``).

Importing the package registers its task and criterion with fairseq when fairseq is loaded
(as under ``fairseq-train --user-dir``); the pruning math in ``fairseq_slt.pruning`` and the
``fairseq-slt`` tools work without importing fairseq.
"""
import sys

from .pruning.io import allow_fairseq_globals

__version__ = "0.1.0"

allow_fairseq_globals()  # fairseq's own torch.load (weights_only=True) needs argparse.Namespace

if "fairseq" in sys.modules:
    from . import criterions, tasks  # noqa: F401  (registration)
