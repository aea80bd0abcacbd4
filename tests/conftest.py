"""Shared pytest fixtures: a tiny BERT and a tiny dataset in the real on-disk layout.

- `tiny_bert_dir` (session): path of a tiny random BERT folder (hidden 32, 2 layers,
  2 heads, max_position_embeddings 64, weights saved so `BertModel.from_pretrained`
  works) whose vocabulary covers every word of the demo captions
  (`lib.data.synthetic.demo_vocabulary()`).
- `tiny_precomp` (session): `(data_path, data_name)` of a small synthetic dataset in
  the real precomp layout, written by `write_demo_dataset`: splits train (32 images),
  dev (10), test (10), testall (10), 5 captions per image, features float32
  (n, TINY_REGIONS=36, TINY_IMG_DIM=32). Use `--img_dim 32` with it. Its captions
  use only words of `tiny_bert_dir`'s vocabulary.
Both are read-only: copy them before modifying anything.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.data.synthetic import demo_vocabulary, write_demo_dataset, write_tiny_bert  # noqa: E402

TINY_IMG_DIM = 32
TINY_REGIONS = 36
TINY_SPLITS = {"train": 32, "dev": 10, "test": 10, "testall": 10}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """Folder of a tiny random BERT covering the demo vocabulary (see module docstring)."""
    return write_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")), demo_vocabulary())


@pytest.fixture(scope="session")
def tiny_precomp(tmp_path_factory):
    """(data_path, data_name) of the small synthetic precomp dataset (see module docstring)."""
    data_path, data_name, _ = write_demo_dataset(
        str(tmp_path_factory.mktemp("tiny_precomp")), img_dim=TINY_IMG_DIM,
        n_regions=TINY_REGIONS, sizes=TINY_SPLITS, seed=0, with_bert=False)
    return data_path, data_name
