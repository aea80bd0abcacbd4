"""lib.data.precomp: region dropping drawn for each caption, not shared by an image's captions."""
import itertools

import numpy as np

from lib.data.precomp import REGION_KEEP_PROB, CaptionEncoder, PrecompDataset, open_split
from lib.model.bert import load_tokenizer


def kept_regions(image, raw):
    """(R,) bool: which rows of raw (R, img_dim) the dropped image (R', img_dim) kept."""
    rows = {row.tobytes() for row in image}
    return np.array([row.tobytes() in rows for row in raw])


def test_the_captions_of_one_image_drop_regions_independently(tiny_precomp, tiny_bert_dir):
    # catches: the drops drawn from the image index (or the five captions of an image otherwise sharing
    # them), which the rate and reproducibility alone do not see.
    files = open_split(*tiny_precomp, "train")
    dataset = PrecompDataset(files, CaptionEncoder(load_tokenizer(tiny_bert_dir), 64), train=True, seed=3)
    dataset.set_epoch(0)
    raw = np.asarray(files.images)
    agree, total = 0, 0
    for image in range(files.n_images):
        cpi = files.captions_per_image
        captions = range(cpi * image, cpi * image + cpi)
        masks = [kept_regions(dataset[c][0].numpy(), raw[image]) for c in captions]
        for a, b in itertools.combinations(masks, 2):
            assert not np.array_equal(a, b)  # chance of a repeat among 320 pairs: about 3e-4
            agree, total = agree + int((a == b).sum()), total + len(a)
    # Independent draws agree on a region with probability p^2 + (1 - p)^2 = 0.68 (p = 0.8).
    expected = REGION_KEEP_PROB ** 2 + (1 - REGION_KEEP_PROB) ** 2
    assert abs(agree / total - expected) < 0.03
