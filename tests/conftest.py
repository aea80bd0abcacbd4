"""Shared pytest fixtures: a tiny BERT and a tiny dataset in the real on-disk layout.

- `tiny_bert_dir` (session): path of a tiny random BERT folder (hidden 32, 2 layers,
  2 heads, max_position_embeddings 64, weights saved so `BertModel.from_pretrained`
  works) whose vocabulary covers every word of the demo captions
  (`lib.data.synthetic.demo_vocabulary()`).
- `tiny_precomp` (session): `(data_path, data_name)` of a small synthetic dataset in
  the real precomp layout, written by `write_demo_dataset`: splits train (32 images),
  dev (10), test (10), testall (10), 5 captions per image, features float32
  (n, TINY_REGIONS=36, TINY_IMG_DIM=32, in helpers.py). Use `--img_dim 32` with it. Its captions
  use only words of `tiny_bert_dir`'s vocabulary.
Both are read-only: copy them before modifying anything.

`one_thread` (autouse): every test runs on one intra-op thread (shared cores: OpenMP's spinning
threads can slow small steps down many times over) and the scripts' --threads does not leak into
the next test.
"""
import builtins
import os

import numpy as np
import pytest
import torch
from helpers import (
    BLOCKS,
    TINY_IMG_DIM,
    TINY_REGIONS,
    TINY_SPLITS,
    D,
    FullDisk,
    _checkpoint,
    checkpoint_of,
    hide_package,
    make_opt,
    model_from_options,
    run_main,
    run_training,
    train_from_options,
)

import retrieve
from lib.cli.train import default_options
from lib.data.precomp import (
    CaptionTokenizer,
    open_split,
)
from lib.data.synthetic import demo_vocabulary, write_demo_dataset, write_tiny_bert
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer


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


@pytest.fixture
def no_scipy(monkeypatch):
    hide_package(monkeypatch, "scipy")


@pytest.fixture
def no_matplotlib(monkeypatch):
    hide_package(monkeypatch, "matplotlib")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """Our checkpoint (tiny BERT, d = 32) whose logits E plant blocks of mutually dependent
    dimensions under a random permutation: -> (path, model, blocks)."""
    data_path, data_name = tiny_precomp
    torch.manual_seed(0)
    opt = default_options(embed_size=D, img_dim=TINY_IMG_DIM, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data_path, data_name=data_name)
    model = model_from_options(opt)
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.repeat(np.arange(len(BLOCKS)), BLOCKS))
    E = np.where(labels[:, None] == labels[None, :], 6.0, -6.0) + rng.normal(0.0, 0.3, (D, D))
    with torch.no_grad():
        model.sim.E.copy_(torch.from_numpy(E))
        model.sim.lam.fill_(0.5)
    path = str(tmp_path_factory.mktemp("planted") / "model_best.pth")
    save_checkpoint(checkpoint_of(model, opt), path)
    return path, model, [np.flatnonzero(labels == b) for b in range(len(BLOCKS))]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    return load_tokenizer(tiny_bert_dir)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return CaptionTokenizer(tokenizer, 64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_bert_dir):
    """An untrained tiny model's checkpoint (d = 16): evaluation tests need weights, not skill."""
    torch.manual_seed(0)
    opt = default_options(embed_size=16, img_dim=TINY_IMG_DIM, bert_path=tiny_bert_dir, device="cpu")
    path = str(tmp_path_factory.mktemp("hardening") / "model.pth")
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_precomp, tiny_bert_dir):
    """Options of a finished 1-epoch run on the tiny data (its model_name holds model_best.pth)."""
    opt = make_opt(tmp_path_factory.mktemp("trained"), tiny_precomp, tiny_bert_dir, num_epochs=1)
    run_training(opt)
    return opt


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """Checkpoint, model, the test split and an image and a caption index built by the CLI."""
    folder = tmp_path_factory.mktemp("retrieval")
    path, model = _checkpoint(folder, tiny_bert_dir, tiny_precomp, seed=0)
    data_path, data_name = tiny_precomp
    split = open_split(data_path, data_name, "test")
    images_index, captions_index = str(folder / "images_index"), str(folder / "captions_index")
    run_main(retrieve.main, ["build", "--model_path", path, "--images", split.images_path,
                             "--index", images_index, "--no_progress"])
    run_main(retrieve.main, ["build", "--model_path", path, "--captions", split.captions_path,
                             "--index", captions_index, "--no_progress"])
    return {"folder": folder, "path": path, "model": model, "split": split,
            "images_index": images_index, "captions_index": captions_index}


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(prefix, room): from now on, files opened for writing whose name starts with `prefix`
    (after any leading dots) take `room` bytes and then fail with ENOSPC, as on a full disk."""
    real_open = builtins.open
    rooms = {}

    def limited_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        room = next((r for prefix, r in rooms.items() if name.lstrip(".").startswith(prefix)), None)
        if room is None or not any(m in mode for m in "wax+"):
            return handle
        return FullDisk(handle, room)

    monkeypatch.setattr(builtins, "open", limited_open)
    return rooms.__setitem__


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """A checkpoint, the test split and an image index built from it."""
    folder = tmp_path_factory.mktemp("safety")
    path, _ = _checkpoint(folder, tiny_bert_dir, tiny_precomp, seed=0)
    split = open_split(*tiny_precomp, "test")
    index = str(folder / "index")
    run_main(retrieve.main, ["build", "--model_path", path, "--images", split.images_path, "--index", index,
                             "--no_progress"])
    return {"path": path, "split": split, "index": index}


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, tiny_precomp, tiny_bert_dir):
    """A finished 1-epoch run on the tiny data: (opt, result). Read-only."""
    tmp = tmp_path_factory.mktemp("one_epoch")
    opt = make_opt(tmp, tiny_precomp, tiny_bert_dir, num_epochs=1)
    return opt, train_from_options(opt)


@pytest.fixture(scope="session", autouse=True)
def one_thread_session():
    """Module- and session-scoped fixtures train on one intra-op thread too (see module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    """Each test starts on one thread; a script's --threads does not leak into the next test."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def test_captions(tiny_precomp):
    """The captions of the tiny test split (a fixture, despite its name)."""
    return open_split(*tiny_precomp, "test").captions
