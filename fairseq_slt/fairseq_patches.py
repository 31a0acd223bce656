"""Where the plugin works around fairseq's own file handling (installed when fairseq loads the plugin).

- ``checkpoint_utils.load_checkpoint_to_cpu``: compact files load directly (``compact_loading``).
- ``file_io.PathManager.copy``: fairseq saves one checkpoint (``checkpoint_best.pt`` or an interval one)
  atomically and then *copies* it to the others (``checkpoint_last.pt``) with ``shutil.copyfile``, which
  truncates the target first and writes through a symlink: a full disk mid-copy left a truncated
  ``checkpoint_last.pt`` and an unresumable run, and a planted link changed a file outside the save dir.
  The copy is made beside the target, flushed, and renamed over it: the target is the old file or the
  new one, whole, and a link is replaced, never written through.
"""
import os
import shutil

from fairseq import file_io

from . import compact_loading
from .pruning.io import _atomic_write

_fairseq_copy = None


def install() -> None:
    global _fairseq_copy
    compact_loading.install()
    if _fairseq_copy is None:
        _fairseq_copy = file_io.PathManager.copy
        file_io.PathManager.copy = staticmethod(atomic_copy)


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    if file_io.IOPathManager:  # remote storage through iopath: its own copy
        return _fairseq_copy(src_path, dst_path, overwrite)
    if os.path.lexists(dst_path) and not overwrite:
        return False
    with open(src_path, "rb") as source:  # the plugin's own atomic write: beside, flushed, renamed
        _atomic_write(dst_path, lambda target: shutil.copyfileobj(source, target, 1 << 20))
    return True
