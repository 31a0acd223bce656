"""Reading and writing fairseq checkpoint files, without importing fairseq.

A fairseq checkpoint is a dict with ``model`` (state_dict), ``cfg``, ``optimizer_history`` and
``extra_state``; the task's own state lives in ``extra_state[TASK_KEY]``.
"""
import hashlib
import os
from typing import Dict, Mapping, Optional

import torch

from .pruning import Mask, UserError, atomic_save, safe_load
from .pruning.compact import aliases, expand_with_mask, is_compact

TASK_KEY = "TranslationSLTTask"  # fairseq files task state under the task's class name


class Checkpoint:
    """A loaded fairseq checkpoint (weights-only load), with the accessors the plugin needs."""

    def __init__(self, path: str, what: str = "checkpoint", state=None, mmap: bool = False):
        """``state``: the file's content when the caller has loaded it already; ``mmap``: read lazily."""
        self.path, self.what = path, what
        state = safe_load(path, what, mmap) if state is None else state
        if is_compact(state):  # fairseq-slt compress: expanded, with its mask
            state = from_compact(state, f"{what} {path} (compact)")
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise UserError(f"{what} {path} is not a fairseq checkpoint (no model weights)")
        odd = next((name for name, value in state["model"].items() if not isinstance(value, torch.Tensor)), None)
        if odd is not None:
            raise UserError(f"{what} {path} is not a fairseq checkpoint (its model entry {odd!r} is not a tensor)")
        if not isinstance(state.get("extra_state") or {}, dict):
            raise UserError(f"{what} {path} is not a fairseq checkpoint (its extra_state is not a dict)")
        self.state = state

    @property
    def model(self) -> Dict[str, torch.Tensor]:
        return self.state["model"]

    @property
    def num_updates(self) -> Optional[int]:
        history = self.state.get("optimizer_history")
        last = history[-1] if isinstance(history, list) and history else {}
        updates = last.get("num_updates") if isinstance(last, dict) else None
        return updates if isinstance(updates, int) else None

    @property
    def task_state(self) -> dict:
        task_state = (self.state.get("extra_state") or {}).get(TASK_KEY) or {}
        return task_state if isinstance(task_state, dict) else {}

    def mask(self) -> Optional[Mask]:
        packed = self.task_state.get("mask")
        return Mask.from_state_dict(packed, source=f"mask in {self.path}") if packed is not None else None

    @property
    def dictionaries(self) -> Optional[str]:
        """Digest of the dictionaries the checkpoint was trained with (None: not recorded)."""
        return (self.task_state.get("identity") or {}).get("dictionaries")

    def check_matches(self, model_state: Mapping[str, torch.Tensor], dictionaries: Optional[str] = None) -> None:
        """One clear error when the checkpoint's weights do not fit the model being trained, or it was
        trained with other dictionaries (check_dictionaries)."""
        for name, tensor in model_state.items():
            if name not in self.model:
                raise UserError(
                    f"{self.what} {self.path} does not match the model: it has no {name} (different architecture?)")
            theirs = tuple(self.model[name].shape)
            if theirs != tuple(tensor.shape):
                raise UserError(
                    f"{self.what} {self.path} does not match the model: {name} has shape {theirs}, the model "
                    f"{tuple(tensor.shape)} (different architecture or vocabulary?)")
        extra = sorted(set(self.model) - set(model_state))
        if extra:
            raise UserError(
                f"{self.what} {self.path} does not match the model: unexpected {extra[0]} (different architecture?)")
        check_dictionaries(f"{self.what} {self.path}", self.dictionaries, dictionaries)


def from_compact(state: dict, source: str = "compact checkpoint") -> dict:
    """The fairseq checkpoint a compact state was made from: its other fields, the expanded weights and,
    when it was pruned by this plugin, its mask again (the masked matrices' nonzero bitmaps)."""
    model, mask = expand_with_mask(state, source)
    checkpoint = dict(state.get("checkpoint") or {}, model=model)
    if mask:
        extra = dict(checkpoint.get("extra_state") or {})
        extra[TASK_KEY] = dict(extra.get(TASK_KEY) or {}, mask=Mask(mask).state_dict())
        checkpoint["extra_state"] = extra
    return checkpoint


def unique_tensors(model: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state dict's entries with tied aliases (the same storage, offset and shape) listed once."""
    return {name: model[name] for name, first in aliases(model).items() if first == name}


def weights_digest(checkpoint: Checkpoint) -> str:
    """SHA-256 over every weight's name, dtype, shape and bytes (tied tensors once): what a model computes,
    whatever file holds it (a packed and unpacked checkpoint has its original's)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unique_tensors(checkpoint.model).items()):
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def inference_state(state: dict) -> dict:
    """The checkpoint without what only training needs: optimizer state and meters, and without the
    plugin's stored mask, which a compact file keeps as its masked matrices' bitmaps; cfg, args,
    history and the rest of the extra state stay."""
    kept = {key: value for key, value in state.items() if key not in ("model", "last_optimizer_state")}
    extra = {key: value for key, value in (kept.get("extra_state") or {}).items() if key != "metrics"}
    if isinstance(extra.get(TASK_KEY), dict):
        extra[TASK_KEY] = {key: value for key, value in extra[TASK_KEY].items() if key != "mask"}
    kept["extra_state"] = extra
    return kept


def rewind_point_path(save_dir: str, update: int) -> str:
    return os.path.join(save_dir, f"checkpoint_rewind_{update}.pt")


def write_model_checkpoint(
    path: str, model_state: Dict[str, torch.Tensor], cfg: dict, num_updates: int, epoch: int, task_state: dict
) -> None:
    """Atomically write model weights as a regular fairseq checkpoint (no optimizer state); tied tensors stay
    one tensor (one copy in the file), as in fairseq's own checkpoints."""
    first_of, copies = aliases(model_state), {}
    for name, first in first_of.items():
        if first == name:
            copies[name] = model_state[name].detach().cpu().clone()
    state = {
        "args": None,
        "cfg": cfg,
        "model": {name: copies[first_of[name]] for name in model_state},
        "criterion": None,
        "optimizer_history": [{
            "criterion_name": (cfg.get("criterion") or {}).get("_name", "label_smoothed_cross_entropy_slt"),
            "optimizer_name": "none",
            "lr_scheduler_state": {},
            "num_updates": num_updates,
        }],
        "task_state": {},
        "extra_state": {
            "train_iterator": {"epoch": epoch, "iterations_in_epoch": 0, "shuffle": True, "version": 2},
            "val_loss": None,
            TASK_KEY: task_state,
        },
    }
    atomic_save(state, path)


def check_dictionaries(what: str, recorded: Optional[str], here: Optional[str]) -> None:
    """One error when a checkpoint (``what``: its option or role and path) recorded another dictionaries' digest
    than the data's (both known): the same sizes with other entries, which fairseq would load and translate or
    train on through the wrong words. For training (a mask or rewind source) and for generation alike."""
    if recorded and here and recorded != here:
        raise UserError(f"{what} was trained with other dictionaries than this data's (digest {recorded} there, "
                        f"{here} here; same sizes, other entries): give the data-bin it was trained on")


def dictionary_digest(src_dict, tgt_dict) -> str:
    """Identifies a source and a target dictionary (entries and order, not only their sizes)."""
    digest = hashlib.sha256()
    for dictionary in (src_dict, tgt_dict):
        digest.update("\n".join(dictionary.symbols).encode() + b"\0")
    return digest.hexdigest()[:16]


class _Symbols:  # what dictionary_digest reads of a fairseq Dictionary
    def __init__(self, path):
        with open(path, encoding="utf-8") as handle:  # fairseq's four specials first, then one "symbol count" a line
            self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [line.split(" ")[0] for line in handle.read().splitlines()]


def dictionary_files_digest(data_bin: str, src: str, tgt: str) -> str:
    """dictionary_digest of data_bin's dict.SRC.txt and dict.TGT.txt, as fairseq will load them."""
    return dictionary_digest(*(_Symbols(os.path.join(data_bin, f"dict.{lang}.txt")) for lang in (src, tgt)))
