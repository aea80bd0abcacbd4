"""Write the two bottom-up-attention extractors' output formats, for tests.

An image is (image id, width, height, boxes (n, 4) float32, features (n, D) float32).
The TSV line and npz layout are written out here from the formats' descriptions
(docs/retrieval.md, "Your own features"), independently of lib/data/butd.py.
"""
import base64
import os

import numpy as np


def tsv_line(image_id, width, height, boxes, feats):
    """One TSV line: image_id, image_w, image_h, num_boxes, base64 boxes, base64 features."""
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode("ascii")
    return "\t".join([image_id, str(width), str(height), str(len(boxes)), b64(boxes), b64(feats)]) + "\n"


def write_tsv(path, images):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(tsv_line(*image) for image in images)
    return str(path)


def write_npz(folder, image, name=None):
    """One bottom-up-attention.pytorch file `{name or image id}.npz`; returns its path."""
    image_id, width, height, boxes, feats = image
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, (name or image_id) + ".npz")
    # bottom-up-attention.pytorch also stores an `info` dict (a pickled object): it must not be read.
    np.savez_compressed(path, x=feats, bbox=boxes, num_bbox=len(boxes), image_w=width, image_h=height,
                        info=np.array({"objects": [1, 2]}, dtype=object))
    return path
