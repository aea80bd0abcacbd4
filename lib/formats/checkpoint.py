"""Checkpoint files: ours (self-contained, `weights_only`-safe) and the official release's.

Our format, version 2, is a dict:

    format        "xdim"
    version       2
    model         flat state dict: img_enc.*, txt_enc.*, sim.* (raw-image mode: also backbone.*)
    model_config  lib.model.config.ModelConfig as a dict (BERT's architecture included)
    train_config  lib.training.config.TrainConfig as a dict, or None
    vocab         BERT's vocabulary, tokens by id (evaluation needs no BERT download)
    optimizer, epoch, best_rsum, iterations   the trainer's state, key by key (resumable files only;
                  lib.training.trainer.Trainer.state)
    rsum          the validation rSum of these very weights (files written since December 2026;
                  resume uses it to prove that a file holds the best weights)

Version 1 (written until December 2026, no `version` key) held one `opt` dict of
the command-line options, `bert_config` and `Eiters` instead. The official release's
files pickle `opt` as an `argparse.Namespace` and their weights under other names
(lib.formats.official). `checkpoint_configs` turns the options of both older
layouts into config fields through one table each (V1_OPTION_FIELDS,
OFFICIAL_OPTION_FIELDS); options missing from a file keep the configs' defaults,
so both load as `--sim xdim` unless they say otherwise.
"""
import argparse
import hashlib
import os
import pickle
import re
import shutil
import zipfile

import torch

from lib.errors import XDimError, first_line
from lib.formats.atomic import atomic_file, remove_stale
from lib.formats.versioned import FileFormat, check_versioned

FORMAT = "xdim"
VERSION = 2
CHECKPOINT_FORMAT = FileFormat(FORMAT, "an X-Dim checkpoint (expected our format or the official release's)",
                               VERSION, fields={"model": dict}, older=(1,), unversioned=1,
                               fix="re-save it")

# Option name -> (config, field) for the official release's pickled options. "model"
# is ModelConfig, "training" TrainConfig; options not listed (runtime settings and the
# official parser's unused ones) are dropped.
OFFICIAL_OPTION_FIELDS = {
    "img_dim": ("model", "img_dim"), "embed_size": ("model", "embed_size"),
    "no_imgnorm": ("model", "no_imgnorm"), "no_txtnorm": ("model", "no_txtnorm"),
    "precomp_enc_type": ("model", "precomp_enc_type"), "backbone_source": ("model", "backbone_source"),
    "backbone_path": ("model", "backbone_path"), "input_scale_factor": ("model", "input_scale_factor"),
    "data_path": ("training", "data_path"), "data_name": ("training", "data_name"),
    "margin": ("training", "margin"), "num_epochs": ("training", "num_epochs"),
    "batch_size": ("training", "batch_size"), "grad_clip": ("training", "grad_clip"),
    "learning_rate": ("training", "learning_rate"), "lr_update": ("training", "lr_update"),
    "optim": ("training", "optim"), "workers": ("training", "workers"), "log_step": ("training", "log_step"),
    "val_step": ("training", "val_step"), "logger_name": ("training", "logger_name"),
    "model_name": ("training", "model_name"), "resume": ("training", "resume"),
    "max_violation": ("training", "max_violation"),
    "vse_mean_warmup_epochs": ("training", "vse_mean_warmup_epochs"),
    "reset_start_epoch": ("training", "reset_start_epoch"),
    "embedding_warmup_epochs": ("training", "embedding_warmup_epochs"),
    "backbone_warmup_epochs": ("training", "backbone_warmup_epochs"),
    "backbone_lr_factor": ("training", "backbone_lr_factor"),
}
# The same for our version-1 files' `opt` dict: the official options plus ours.
V1_OPTION_FIELDS = {
    **OFFICIAL_OPTION_FIELDS,
    "sim": ("model", "sim"), "bert_path": ("model", "bert"),
    "seed": ("training", "seed"), "mask_padded_regions": ("training", "mask_padded_regions"),
}

# The model part of our checkpoints (version 1's `opt` and `bert_config` included); every
# other key of a resumable file is the trainer's state.
MODEL_KEYS = ("format", "version", "model", "model_config", "train_config", "vocab", "opt", "bert_config")
# A buffer transformers 4.x saved in 2023 and current versions no longer keep in the state dict.
LEGACY_BUFFERS = ("txt_enc.bert.embeddings.position_ids",)
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"


class _RecordingWriter:
    """A file for torch.save that keeps the OSError of a failed write: torch reports a full disk
    only as a RuntimeError of its zip writer ("[enforce fail at inline_container.cc] ...")."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self):
        return self.file.flush()


def save_checkpoint(state, path):
    """torch.save `state` to `path` atomically: a crash mid-write leaves the old file intact, a full
    disk is one XDimError line (lib.formats.atomic.full_disk_error)."""
    with atomic_file(path) as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None


def copy_checkpoint(src, dst):
    """Copy the file `src` to `dst` atomically (e.g. checkpoint.pth -> model_best.pth)."""
    with open(src, "rb") as source, atomic_file(dst, size=os.path.getsize(src)) as f:
        shutil.copyfileobj(source, f)


def remove_stale_temp_files(folder):
    """Delete the temporary checkpoint files (`*.pth.xdim-tmp-<pid>`) in `folder` whose writing
    process is gone; other files stay. -> the removed paths."""
    return remove_stale(folder, lambda target: target.endswith(".pth"))


def new_checkpoint(model, train_config=None, trainer_state=None):
    """Our checkpoint dict (version 2, module docstring), the one place where it is put together.

    model: an XDimModel (its state dict, ModelConfig and BERT vocabulary are read);
    train_config: the TrainConfig it was trained with, or None; trainer_state: for a
    resumable file, the trainer's state as a dict (lib.training.trainer.Trainer.state:
    optimizer, epoch, best_rsum, iterations, ...), stored beside the model key by key.
    """
    ckpt = {"format": FORMAT, "version": VERSION, "model": model.state_dict(),
            "model_config": model.config.as_dict(),
            "train_config": None if train_config is None else train_config.as_dict(),
            "vocab": list(model.vocab())}
    for key, value in (trainer_state or {}).items():
        if key in ckpt:
            raise ValueError(f"trainer state key {key!r} is a key of the model part")
        ckpt[key] = value
    return ckpt


def training_state(ckpt):
    """The trainer state of a resumable checkpoint of version 1 or 2, as the dict Trainer.state
    gave: every key beside the model part (version 1's `Eiters` read as `iterations`)."""
    state = {key: value for key, value in ckpt.items() if key not in MODEL_KEYS}
    if "Eiters" in state:
        state["iterations"] = state.pop("Eiters")
    return state


def _looks_like_text(head):
    """True when the first bytes of a file decode as UTF-8 text without control characters."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a character cut by the end of `head` is still text
        if error.start < len(head) - 3:
            return False
        text = head[:error.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _refused_global(exc):
    """The Python object a weights-only load refused (e.g. 'os.system'), or None."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    match = re.search(r"\bGLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def unreadable_reason(path, exc):
    """The one-line reason a file that torch.load rejected (raising `exc`) is not a checkpoint (or head)."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    refused = _refused_global(exc)
    if refused:
        return (f"{path}: holds Python objects ({refused}) that a safe load refuses to create, so it "
                "is not read (X-Dim checkpoints and heads hold only tensors, numbers, strings and options)")
    if head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path):
        return f"{path}: is truncated or corrupt (its zip archive lacks the end record); re-download or re-save it"
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTO):
        detail = first_line(exc) if len(first_line(exc)) <= 100 else type(exc).__name__
        return f"{path}: is truncated or corrupt ({detail}); re-download or re-save it"
    return f"{path}: is not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint of either format with `weights_only=True`.

    The official files' `argparse.Namespace` is admitted through PyTorch's safe-globals
    allowlist; nothing else that a weights-only load refuses is ever admitted. Raises
    XDimError (one line saying what the file is) for a missing, empty, text, truncated,
    corrupt or foreign file.
    """
    if os.path.isdir(path):
        best = os.path.join(path, "model_best.pth")
        hint = f"; did you mean {best}?" if os.path.isfile(best) else ", give the checkpoint file inside it"
        raise XDimError(f"{path}: is a folder, not a checkpoint file{hint}")
    if not os.path.isfile(path):
        raise XDimError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise XDimError(f"{path}: is empty, not a checkpoint")
    if _looks_like_text(head):
        raise XDimError(f"{path}: is a text file, not a PyTorch checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, corrupt or unsafe files
        raise XDimError(unreadable_reason(path, exc)) from None
    if not (isinstance(ckpt, dict) and is_official(ckpt)):
        check_versioned(ckpt, path, CHECKPOINT_FORMAT)
    return ckpt


def is_official(ckpt):
    """True for the official release's layout: `model` is a list of three state dicts."""
    model = ckpt.get("model")
    return isinstance(model, (list, tuple)) and len(model) == 3 and all(isinstance(p, dict) for p in model)


def _options_to_configs(options, table):
    """Split an options dict into {'model': {...}, 'training': {...}} config fields by `table`."""
    configs = {"model": {}, "training": {}}
    for option, value in options.items():
        if option in table and value is not None:
            section, name = table[option]
            configs[section][name] = value
    return configs


def checkpoint_configs(ckpt):
    """{'model': ModelConfig fields, 'training': TrainConfig fields} of a checkpoint of any layout.

    Version 2 stores both; version 1 and official files are converted from their options.
    `ckpt` comes from load_checkpoint, which refused the versions this code does not read.
    """
    if is_official(ckpt):
        options = ckpt.get("opt")
        options = vars(options) if isinstance(options, argparse.Namespace) else dict(options or {})
        return _options_to_configs(options, OFFICIAL_OPTION_FIELDS)
    if ckpt.get("version", CHECKPOINT_FORMAT.unversioned) == 1:
        configs = _options_to_configs(dict(ckpt.get("opt") or {}), V1_OPTION_FIELDS)
        if ckpt.get("bert_config") is not None:
            configs["model"]["bert_config"] = ckpt["bert_config"]
        return configs
    return {"model": dict(ckpt["model_config"]), "training": dict(ckpt.get("train_config") or {})}


def check_state_dict(state, expected, path="checkpoint"):
    """Raise XDimError naming the first missing, unexpected or mis-shaped key of `state`."""
    for name, tensor in expected.items():
        if name not in state:
            raise XDimError(f"{path}: missing key {name!r}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise XDimError(f"{path}: key {name!r} has shape {tuple(state[name].shape)}, the model expects "
                            f"{tuple(tensor.shape)} (a model of another size?)")
    for name in state:
        if name not in expected and name not in LEGACY_BUFFERS:
            raise XDimError(f"{path}: unexpected key {name!r}")


def weights_fingerprint(state):
    """SHA-256 (hex) of a state dict's names, dtypes, shapes and values: equal exactly when the weights are."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
