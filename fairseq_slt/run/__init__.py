"""One ``fairseq-train`` run's pruning, without fairseq: its options and identity (``options``), its start
(``plan``), the hooks the task calls (``hooks``), its save dir (``folder``), the rank checks (``ranks``) and
the fp16 master copies (``masters``)."""
from .hooks import Phase, PruningRun
from .plan import MaskMaker, StartPlan

__all__ = ["MaskMaker", "Phase", "PruningRun", "StartPlan"]
