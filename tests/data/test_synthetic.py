"""The demo written as image files (lib.data.synthetic.write_demo_images, make_demo.py --images)."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lib.data import synthetic
from lib.data.images import open_image_split
from lib.errors import XDimError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"train": 6, "dev": 3, "test": 3}


def tiles_of(image, pattern, size):
    """How many layout cells of `image` hold the tile of `pattern` (exactly, as painted)."""
    cell, pixels = size // 4, size // 16
    tile = np.repeat(np.repeat(pattern, pixels, 0), pixels, 1)
    offset = (cell - len(tile)) // 2
    return sum(np.array_equal(image[r * cell + offset:r * cell + offset + len(tile),
                                    c * cell + offset:c * cell + offset + len(tile)], tile)
               for r in range(4) for c in range(4))


@pytest.mark.parametrize("size", [32, 64])
def test_painted_objects_show_their_pattern_count_and_colour(size):
    patterns = synthetic.demo_patterns(0)
    objects = [(3, synthetic.DEMO_COLOURS.index("red"), 1), (5, -1, 2)]
    image = synthetic.paint_demo_image(objects, patterns, np.random.default_rng(1), size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert tiles_of(image, patterns[3], size) == 1 and tiles_of(image, patterns[5], size) == 2
    assert tiles_of(image, patterns[7], size) == 0
    red = np.all(image == synthetic.DEMO_COLOUR_RGB["red"], axis=-1)
    assert red.sum() == (3 * size // 16 + 2 * (size // 32)) ** 2 - (3 * size // 16) ** 2  # one frame


def folder_digest(folder):
    digest = hashlib.md5()
    for base, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            with open(os.path.join(base, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def test_demo_images_open_as_a_split_and_depend_only_on_the_seed(tmp_path):
    data_path, data_name, bert = synthetic.write_demo_images(str(tmp_path / "a"), SIZES, seed=3, size=32,
                                                             with_bert=False)
    assert bert is None and data_name == synthetic.DEMO_IMAGES_NAME
    for split, n_images in SIZES.items():
        split_files = open_image_split(data_path, data_name, split)
        assert (split_files.n_images, split_files.n_captions) == (n_images, 5 * n_images)
    again, _, _ = synthetic.write_demo_images(str(tmp_path / "b"), SIZES, seed=3, size=32, with_bert=False)
    other, _, _ = synthetic.write_demo_images(str(tmp_path / "c"), SIZES, seed=4, size=32, with_bert=False)
    assert folder_digest(data_path) == folder_digest(again) != folder_digest(other)


def test_captions_name_what_the_image_shows(tmp_path):
    data_path, data_name, _ = synthetic.write_demo_images(str(tmp_path), {"test": 8}, size=64, with_bert=False)
    split = open_image_split(data_path, data_name, "test")
    patterns = synthetic.demo_patterns(0)
    for index, path in enumerate(split.image_paths):
        image = np.asarray(Image.open(path), dtype=np.int16)
        words = {word.strip(".,").removesuffix("s") for caption in split.captions[5 * index:5 * index + 5]
                 for word in caption.lower().split()}
        for obj, name in enumerate(synthetic.DEMO_OBJECTS):
            tile = np.repeat(np.repeat(patterns[obj], 4, 0), 4, 1).astype(np.int16)
            shown = any(np.abs(image[r * 16 + 2:r * 16 + 14, c * 16 + 2:c * 16 + 14] - tile).mean() < 25
                        for r in range(4) for c in range(4))
            assert shown == (name in words), (path, name)


def test_make_demo_images_command(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "data", "make_demo.py"), "--out", str(tmp_path), "--images",
               "--train_images", "4", "--dev_images", "2", "--test_images", "2", "--testall_images", "2"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    data_path = os.path.join(str(tmp_path), synthetic.DEMO_IMAGES_NAME)
    assert f"demo images: --data_path {data_path} --data_name demo_images" in done.stdout
    assert open_image_split(data_path, "demo_images", "testall").n_images == 2
    assert os.path.isfile(os.path.join(str(tmp_path), "bert-tiny", "vocab.txt"))
    refused = subprocess.run(command + ["--image_size", "16"], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2 and "--image_size must be at least 32" in refused.stderr
    with pytest.raises(XDimError):
        open_image_split(data_path, "demo_images", "missing")
