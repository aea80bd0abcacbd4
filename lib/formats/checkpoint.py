"""Checkpoint files: ours (self-contained, `weights_only`-safe) and the official release's.

Our format is a dict: `format` ("xdim"), `model` (flat state dict with `img_enc.`,
`txt_enc.` and `sim.` prefixes), `optimizer`, `epoch`, `best_rsum`, `Eiters`,
`opt` (options as a plain dict), `bert_config` and `vocab` (so evaluation needs
no BERT download).

The authors' release checkpoints pickle `opt` as an `argparse.Namespace` and
store `model` as a list of three state dicts with `module.` prefixes and their own
key names; `official_state_dict` maps them onto ours with one table (docs/method.md
lists the similarity's). They load as `--sim xdim`, as do ours saved before `--sim`.
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
from lib.model.similarity import DEFAULT_SIMILARITY

FORMAT = "xdim"

# (part, official key) -> our key. Parts: 0 image encoder, 1 text encoder, 2 similarity.
OFFICIAL_KEYS = {
    (0, "fc.weight"): "img_enc.fc.weight",
    (0, "fc.bias"): "img_enc.fc.bias",
    (0, "mlp.layers.0.weight"): "img_enc.mlp_in.weight",
    (0, "mlp.layers.0.bias"): "img_enc.mlp_in.bias",
    (0, "mlp.bns.0.weight"): "img_enc.mlp_bn.weight",
    (0, "mlp.bns.0.bias"): "img_enc.mlp_bn.bias",
    (0, "mlp.bns.0.running_mean"): "img_enc.mlp_bn.running_mean",
    (0, "mlp.bns.0.running_var"): "img_enc.mlp_bn.running_var",
    (0, "mlp.bns.0.num_batches_tracked"): "img_enc.mlp_bn.num_batches_tracked",
    (0, "mlp.layers.1.weight"): "img_enc.mlp_out.weight",
    (0, "mlp.layers.1.bias"): "img_enc.mlp_out.bias",
    (1, "linear.weight"): "txt_enc.proj.weight",
    (1, "linear.bias"): "txt_enc.proj.bias",
    (2, "weights.weight"): "sim.E",
    (2, "sim_map.weight"): "sim.lam",
    (2, "temp_learnable.weight"): "sim.log_t_mask",
    (2, "temp_scale.weight"): "sim.log_t_attn",
}
# BERT's own keys keep their names under this prefix.
OFFICIAL_PREFIXES = {(1, "bert."): "txt_enc.bert."}
# Entries the official model holds but never uses (BatchNorm after the MLP's last layer, sim_eval).
OFFICIAL_UNUSED = ((0, "mlp.bns.1."), (2, "sim_eval.weight"))
# A buffer transformers 4.x saved in 2023 and current versions no longer keep in the state dict.
LEGACY_BUFFERS = ("txt_enc.bert.embeddings.position_ids",)
PART_NAMES = ("image encoder", "text encoder", "similarity")
# Temporary files of an atomic save: `checkpoint.pth.tmp-<pid>` (visible to ls), and the
# hidden `.checkpoint.pth.<pid>.tmp` that earlier versions wrote. Group 1 is the pid.
TEMP_PATTERNS = (re.compile(r"^.+\.pth\.tmp-(\d+)$"), re.compile(r"^\..+\.pth\.(\d+)\.tmp$"))
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"


def temp_path(path):
    """The temporary file an atomic write of `path` goes through (named after this process)."""
    return f"{path}.tmp-{os.getpid()}"


def _write_atomically(path, write):
    """Call write(file) on a temporary file next to `path`, then rename it onto `path`.

    A crash or a full disk mid-write leaves the previous `path` intact; a killed process
    leaves its temporary file, which `remove_stale_temp_files` deletes later.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state, path):
    """torch.save `state` to `path` atomically: a crash mid-write leaves the old file intact."""
    _write_atomically(path, lambda f: torch.save(state, f))


def copy_checkpoint(src, dst):
    """Copy the file `src` to `dst` atomically (e.g. checkpoint.pth -> model_best.pth)."""
    with open(src, "rb") as source:
        _write_atomically(dst, lambda f: shutil.copyfileobj(source, f))


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder):
    """Delete the temporary checkpoint files in `folder` whose writing process is gone.

    Only names of TEMP_PATTERNS are touched, and only when their pid is not a running
    process (a live save is left alone). -> the removed paths.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        match = next((m for m in (p.match(name) for p in TEMP_PATTERNS) if m), None)
        path = os.path.join(folder, name)
        if match and os.path.isfile(path) and not _process_alive(int(match.group(1))):
            os.remove(path)
            removed.append(path)
    return removed


def make_checkpoint(model, epoch, best_rsum):
    """Everything a resume or an evaluation needs, in our format (loads with weights_only=True)."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": model.optimizer.state_dict(),
        "epoch": int(epoch),
        "best_rsum": float(best_rsum),
        "Eiters": int(model.Eiters),
        "opt": dict(vars(model.opt)),
        "bert_config": model.bert_config,
        "vocab": model.vocab(),
    }


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


def _unreadable(path, head, exc):
    """The one-line reason a file that torch.load rejected is not a checkpoint."""
    refused = _refused_global(exc)
    if refused:
        return (f"{path}: holds Python objects ({refused}) that a safe load refuses to create, so it "
                "is not read (X-Dim checkpoints hold only tensors, numbers, strings and options)")
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
        raise XDimError(_unreadable(path, head, exc)) from None
    if not (isinstance(ckpt, dict) and "model" in ckpt and (ckpt.get("format") == FORMAT or is_official(ckpt))):
        raise XDimError(f"{path}: not an X-Dim checkpoint (expected our format or the official release's)")
    return ckpt


def is_official(ckpt):
    """True for the official release's layout: `model` is a list of three state dicts."""
    model = ckpt.get("model")
    return isinstance(model, (list, tuple)) and len(model) == 3 and all(isinstance(p, dict) for p in model)


def official_options(ckpt):
    """The official checkpoint's options as a plain dict."""
    opt = ckpt.get("opt")
    return dict(vars(opt)) if isinstance(opt, argparse.Namespace) else dict(opt or {})


def similarity_name(ckpt):
    """The `--sim` a checkpoint was trained with; `xdim` for official files and ours from before `--sim`."""
    opt = ckpt.get("opt")
    saved = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt or {})
    return saved.get("sim") or DEFAULT_SIMILARITY


def official_state_dict(parts, expected, path="checkpoint"):
    """Map the official `model` list onto our flat key names.

    parts: the three official state dicts; expected: our state dict (name -> tensor),
    used for the key set and shapes. Returns our-named tensors; raises XDimError naming
    the first unknown, missing or mis-shaped key.
    """
    ours = {}
    for part, state in enumerate(parts):
        for official_key, tensor in state.items():
            key = official_key[len("module."):] if official_key.startswith("module.") else official_key
            if any(part == p and key.startswith(prefix) for p, prefix in OFFICIAL_UNUSED):
                continue
            name = _our_name(part, key)
            if name is None or (name not in expected and name not in LEGACY_BUFFERS):
                raise XDimError(f"{path}: unexpected key {official_key!r} in the official {PART_NAMES[part]}")
            if name in expected:
                ours[name] = _fit_shape(tensor, expected[name].shape, official_key, path)
    missing = [name for name in expected if name not in ours]
    if missing:
        raise XDimError(f"{path}: official checkpoint lacks {_official_name(missing[0])!r} (our {missing[0]!r})")
    return ours


def _our_name(part, key):
    if (part, key) in OFFICIAL_KEYS:
        return OFFICIAL_KEYS[(part, key)]
    for (p, prefix), target in OFFICIAL_PREFIXES.items():
        if p == part and key.startswith(prefix):
            return target + key[len(prefix):]
    return None


def _official_name(name):
    for (part, key), ours in OFFICIAL_KEYS.items():
        if ours == name:
            return f"model[{part}].module.{key}"
    for (part, prefix), target in OFFICIAL_PREFIXES.items():
        if name.startswith(target):
            return f"model[{part}].module.{prefix}{name[len(target):]}"
    return name


def _fit_shape(tensor, shape, official_key, path):
    """The official scalars and vectors carry leading singleton dims ((1, d), (1, 1)); drop them."""
    if tensor.shape == shape:
        return tensor
    leading = tensor.dim() - len(shape)
    if leading > 0 and tensor.shape[leading:] == shape and all(n == 1 for n in tensor.shape[:leading]):
        return tensor.reshape(shape)
    raise XDimError(f"{path}: key {official_key!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")


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
