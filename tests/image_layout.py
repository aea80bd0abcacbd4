"""A small dataset of image files in the official raw-image layout, written for tests.

data_path/precomp/S_caps.txt (5 captions per image) and S_ids.txt (one id per image),
data_path/id_mapping.json ({"<id>": "<file>"}) and data_path/flickr30k-images/<file>:
64 x 64 colour images, JPEG and PNG alternately, each a coloured square whose colour its
captions name, so a model can learn something. Written here, independently of the demo
writer of lib.data, with Pillow.
"""
import json
import os

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "black": (10, 10, 10)}
OBJECTS = ("dog", "cat", "car", "boat", "bird")


def write_image_layout(root, sizes=None, side=64, seed=0):
    """-> (data_path, data_name) of the layout under `root` (sizes: split -> number of images)."""
    sizes = sizes or {"train": 8, "dev": 4, "test": 4}
    rng = np.random.RandomState(seed)
    data_path = os.path.join(root, "f30k")
    os.makedirs(os.path.join(data_path, "precomp"), exist_ok=True)
    os.makedirs(os.path.join(data_path, "flickr30k-images"), exist_ok=True)
    mapping, next_id = {}, 1000
    for split, n_images in sizes.items():
        ids, captions = [], []
        for _ in range(n_images):
            colour = list(COLOURS)[rng.randint(len(COLOURS))]
            pixels = rng.randint(0, 256, size=(side, side, 3)).astype(np.uint8) // 4 + 96
            top, left = rng.randint(0, side // 2, size=2)
            pixels[top:top + side // 2, left:left + side // 2] = COLOURS[colour]
            name = f"{next_id}.{'jpg' if next_id % 2 else 'png'}"
            Image.fromarray(pixels).save(os.path.join(data_path, "flickr30k-images", name))
            mapping[str(next_id)] = name
            ids.append(str(next_id))
            captions += [f"a {colour} {OBJECTS[k]} in the picture" for k in range(5)]
            next_id += 1
        with open(os.path.join(data_path, "precomp", f"{split}_ids.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        with open(os.path.join(data_path, "precomp", f"{split}_caps.txt"), "w") as f:
            f.write("\n".join(captions) + "\n")
    with open(os.path.join(data_path, "id_mapping.json"), "w") as f:
        json.dump(mapping, f)
    return data_path, "f30k"
