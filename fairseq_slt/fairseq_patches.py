"""Where the plugin works around fairseq's own file handling (installed when fairseq loads the plugin).

- ``checkpoint_utils.load_checkpoint_to_cpu``: compact files load directly (``compact_loading``).
- ``file_io.PathManager.copy``: fairseq saves one checkpoint (``checkpoint_best.pt`` or an interval one)
  atomically and then *copies* it to the others (``checkpoint_last.pt``) with ``shutil.copyfile``, which
  truncates the target first and writes through a symlink: a full disk mid-copy left a truncated
  ``checkpoint_last.pt`` and an unresumable run, and a planted link changed a file outside the save dir.
  The copy is made beside the target, flushed, and renamed over it: the target is the old file or the
  new one, whole, and a link is replaced, never written through.
- ``checkpoint_utils.torch_persistent_save``: fairseq writes ``NAME.tmp`` (through a link planted there),
  does not flush it to disk, and on a failure retries twice, 2.5 s apart. The plugin's atomic save
  replaces it: a temporary file of its own beside ``NAME``, flushed, renamed; removed on any failure.
"""
import os

from fairseq import checkpoint_utils, file_io

from . import compact_loading
from .pruning.io import atomic_save, atomic_write_stream

_fairseq_copy = None
_fairseq_save = None


def install() -> None:
    global _fairseq_copy, _fairseq_save
    compact_loading.install()
    if _fairseq_copy is None:
        _fairseq_copy = file_io.PathManager.copy
        file_io.PathManager.copy = staticmethod(atomic_copy)
    if _fairseq_save is None:
        _fairseq_save = checkpoint_utils.torch_persistent_save
        checkpoint_utils.torch_persistent_save = atomic_persistent_save


def atomic_persistent_save(obj, filename: str, async_write: bool = False) -> None:
    if async_write or _remote(filename):  # fairseq's asynchronous or remote writers: theirs
        return _fairseq_save(obj, filename, async_write)
    atomic_save(obj, filename)


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    if _remote(src_path) or _remote(dst_path):  # remote storage through iopath: its own copy
        return _fairseq_copy(src_path, dst_path, overwrite)
    if os.path.lexists(dst_path) and not overwrite:
        return False
    with open(src_path, "rb") as source:  # the plugin's own atomic write: beside, flushed, renamed
        atomic_write_stream(source, dst_path)
    return True


def _remote(path: str) -> bool:
    return "://" in str(path)  # iopath's URLs (s3://, manifold://); a local path is ours whether iopath is there or not
