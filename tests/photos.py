"""Folders of small photos and tiny raw-image (backbone-mode) checkpoints for the photo search tests."""
import os

import numpy as np
import torch
from helpers import checkpoint_of, model_from_options
from PIL import Image

from lib.cli.train import default_options
from lib.formats.checkpoint import save_checkpoint
from lib.model.xdim_model import XDimModel

# T = int(256 * 0.5) = 128 pixels, a 4 x 4 grid of 128-channel cells (stem width 4), embeddings of 16.
GRID_OPTIONS = {"precomp_enc_type": "backbone", "backbone_width": 4, "backbone_path": "none",
                "input_scale_factor": 0.5, "embed_size": 16}
GRID_CELLS = 16
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def backbone_checkpoint(path, bert_dir, seed=0):
    """Save an untrained tiny backbone-mode X-Dim at `path` -> the model loaded back from it."""
    torch.manual_seed(seed)
    opt = default_options(bert_path=bert_dir, device="cpu", workers=0, **GRID_OPTIONS)
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), str(path))
    return XDimModel.from_checkpoint(str(path), device="cpu")


def write_photo(path, colour, size=(48, 64), seed=0):
    """A photo of about one colour (RGB 0..255), shaded and noisy, in the format its suffix names."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    shade = np.linspace(-40, 40, size[1])[None, :, None] * rng.choice([-1, 1], 3)  # a left-right gradient
    noise = rng.integers(-12, 13, (*size, 3))
    pixels = np.clip(np.array(colour)[None, None] + shade + noise, 0, 255).astype(np.uint8)
    suffix = os.path.splitext(path)[1].lower()
    Image.fromarray(pixels).save(path, format=FORMATS[suffix])
    return path


def write_album(root, n=10):
    """`n` photos in nested folders and three formats, a text file, and a truncated JPEG.
    -> the photo paths relative to root, sorted (the truncated file included)."""
    names = []
    for k in range(n):
        suffix = (".jpg", ".png", ".webp", ".JPG")[k % 4]
        name = f"{('trips', 'home', 'trips/beach')[k % 3]}/p{k:02d}{suffix}"
        write_photo(os.path.join(root, name), ((37 * k) % 256, (91 * k) % 256, (53 * k + 90) % 256), seed=k)
        names.append(name)
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not a photo\n")
    good = write_photo(os.path.join(root, "broken.jpg"), (200, 10, 10))
    with open(good, "rb") as f:
        data = f.read()
    with open(good, "wb") as f:
        f.write(data[:len(data) // 3])
    return sorted(names + ["broken.jpg"])


def tree_state(root):
    """{relative path: (bytes, mtime_ns)} of every file and link under root (to show nothing changed)."""
    state = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, root)] = (f.read(), os.lstat(path).st_mtime_ns)
    return state
