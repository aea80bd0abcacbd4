"""Precomp splits, datasets, collation, loaders, region dropping and input errors."""
import os

import numpy as np
import pytest
import torch
from conftest import TINY_IMG_DIM, TINY_REGIONS, TINY_SPLITS

from lib.data.precomp import (
    CaptionDataset,
    CaptionEncoder,
    ImageDataset,
    PrecompDataset,
    collate_pairs,
    drop_regions,
    open_split,
    set_loader_epoch,
    train_loader,
)
from lib.data.synthetic import demo_vocabulary
from lib.errors import XDimError
from lib.evaluation.encoding import encoded_captions, encoded_images
from lib.model.bert import load_tokenizer


def write_split(folder, split, images, captions):
    """Write `{folder}/{split}_ims.npy` and `{split}_caps.txt` (captions: list of str, or bytes)."""
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{split}_ims.npy"), images)
    data = captions if isinstance(captions, bytes) else ("\n".join(captions) + "\n").encode("utf-8")
    with open(os.path.join(folder, f"{split}_caps.txt"), "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    return load_tokenizer(tiny_bert_dir)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return CaptionEncoder(tokenizer, 64)


# ---------------------------------------------------------------- splits

def test_open_split_real_layout(tiny_precomp):
    data_path, data_name = tiny_precomp
    for split, n_images in TINY_SPLITS.items():
        files = open_split(data_path, data_name, split, img_dim=TINY_IMG_DIM)
        assert isinstance(files.images, np.memmap)
        assert files.images.shape == (n_images, TINY_REGIONS, TINY_IMG_DIM)
        assert files.images.dtype == np.float32
        assert files.captions_per_image == 5 and files.n_captions == 5 * n_images
        with open(os.path.join(data_path, data_name, f"{split}_caps.txt"), encoding="utf-8") as f:
            assert files.captions == f.read().splitlines()


def test_demo_captions_use_only_vocabulary_words(tiny_precomp, tokenizer):
    files = open_split(*tiny_precomp, "train")
    ids = {t for caption in files.captions for t in tokenizer(caption)["input_ids"]}
    assert tokenizer.unk_token_id not in ids
    words = {w for caption in files.captions for w in caption.lower().replace(".", "").split()}
    assert words - set(demo_vocabulary()) <= {w + "s" for w in demo_vocabulary()}


def test_one_caption_per_image(tmp_path):
    images = np.arange(4 * 3 * 8, dtype=np.float32).reshape(4, 3, 8)
    write_split(tmp_path / "one", "test", images, ["a dog", "a cat", "a bird", "a cow"])
    files = open_split(str(tmp_path), "one", "test")
    assert files.captions_per_image == 1 and files.n_images == 4


def test_dev_capped_at_5000_captions(tmp_path):
    captions = [f"caption {i}" for i in range(5050)]
    images = np.random.default_rng(0).random((1010, 2, 4), dtype=np.float32)
    write_split(tmp_path / "five", "dev", images, captions)
    write_split(tmp_path / "five", "test", images, captions)
    dev = open_split(str(tmp_path), "five", "dev")
    assert dev.n_captions == 5000 and dev.n_images == 1000
    assert dev.captions == captions[:5000]
    np.testing.assert_array_equal(dev.images, images[:1000])
    test = open_split(str(tmp_path), "five", "test")
    assert test.n_captions == 5050 and test.n_images == 1010

    one = np.random.default_rng(1).random((5003, 1, 4), dtype=np.float32)
    write_split(tmp_path / "single", "dev", one, [f"c {i}" for i in range(5003)])
    dev = open_split(str(tmp_path), "single", "dev")
    assert dev.captions_per_image == 1 and dev.n_captions == 5000 and dev.n_images == 5000


# ---------------------------------------------------------------- datasets and collation

def test_eval_items(tiny_precomp, tokenizer, encoder):
    files = open_split(*tiny_precomp, "test")
    dataset = PrecompDataset(files, encoder, train=False)
    raw = np.load(os.path.join(*tiny_precomp, "test_ims.npy"))
    assert len(dataset) == 50
    for index in (0, 4, 5, 49):
        image, ids, caption_index, image_index = dataset[index]
        assert (caption_index, image_index) == (index, index // 5)
        assert image.dtype == torch.float32
        np.testing.assert_array_equal(image.numpy(), raw[index // 5])
        assert ids.tolist() == tokenizer(files.captions[index])["input_ids"]
    image, index = ImageDataset(files)[3]
    np.testing.assert_array_equal(image.numpy(), raw[3])
    ids, index = CaptionDataset(files, encoder)[7]
    assert ids.tolist() == tokenizer(files.captions[7])["input_ids"] and index == 7


def test_collate_pairs_pads_with_zeros():
    a = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    b = torch.full((1, 2), 7.0)
    batch = [(a, torch.tensor([2, 9, 3]), 10, 2), (b, torch.tensor([2, 8, 8, 8, 3]), 11, 2)]
    images, image_lengths, captions, lengths, caption_indices, image_indices = collate_pairs(batch)
    expected_images = torch.tensor([[[0., 1.], [2., 3.], [4., 5.]], [[7., 7.], [0., 0.], [0., 0.]]])
    assert torch.equal(images, expected_images)
    assert image_lengths.tolist() == [3, 1]
    assert torch.equal(captions, torch.tensor([[2, 9, 3, 0, 0], [2, 8, 8, 8, 3]]))
    assert captions.dtype == torch.long and lengths.tolist() == [3, 5]
    assert caption_indices.tolist() == [10, 11] and image_indices.tolist() == [2, 2]


class IdentityModel:
    """Stands in for the model in the batch encoder: embeddings are the inputs themselves."""

    def encode_images(self, images, lengths):
        return images

    def encode_captions(self, ids, lengths):
        return ids


def test_evaluation_encoding_covers_split_in_order(tiny_precomp, encoder):
    files = open_split(*tiny_precomp, "testall")
    images = list(encoded_images(IdentityModel(), files.images, batch_size=4, progress=False))
    assert torch.cat([b[2] for b in images]).tolist() == list(range(10))
    assert all(b[0].shape[1] == TINY_REGIONS for b in images)
    assert torch.equal(torch.cat([b[0] for b in images]), torch.from_numpy(np.array(files.images)))
    captions = list(encoded_captions(IdentityModel(), CaptionDataset(files, encoder), batch_size=16, progress=False))
    assert torch.cat([b[2] for b in captions]).tolist() == list(range(50))


# ---------------------------------------------------------------- region dropping

def is_ordered_subset(rows, image):
    """True when every row of `rows` is a row of `image`, in increasing row order."""
    positions = [int(np.flatnonzero((image == row).all(axis=1))[0]) for row in rows]
    return positions == sorted(set(positions))


def test_region_dropping_rate_and_reproducibility(tiny_precomp, encoder):
    files = open_split(*tiny_precomp, "train")
    raw = np.load(os.path.join(*tiny_precomp, "train_ims.npy"))
    dataset = PrecompDataset(files, encoder, train=True, seed=3)
    kept, total = 0, 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            image = dataset[index][0].numpy()
            assert is_ordered_subset(image, raw[index // 5])
            kept, total = kept + image.shape[0], total + TINY_REGIONS
    assert abs(kept / total - 0.8) < 4.5 * np.sqrt(0.8 * 0.2 / total)

    dataset.set_epoch(1)
    first = [dataset[i] for i in (0, 17)]
    dataset.set_epoch(2)
    other = dataset[0]
    dataset.set_epoch(1)
    again = PrecompDataset(files, encoder, train=True, seed=3)
    again.set_epoch(1)
    for index, item in zip((0, 17), first):
        for copy in (dataset[index], again[index]):
            assert torch.equal(copy[0], item[0]) and torch.equal(copy[1], item[1])
    assert not (other[0].shape == first[0][0].shape and torch.equal(other[0], first[0][0]))

    evaluation = PrecompDataset(files, encoder, train=False)
    assert all(evaluation[i][0].shape[0] == TINY_REGIONS for i in range(0, 160, 7))


def test_drop_regions_keeps_at_least_one():
    image = np.arange(10, dtype=np.float32).reshape(5, 2)
    rng = np.random.default_rng(0)
    draws = np.random.default_rng(0).random(5)
    kept = drop_regions(image, rng, keep_prob=0.0)
    np.testing.assert_array_equal(kept, image[[np.argmin(draws)]])
    np.testing.assert_array_equal(drop_regions(image, rng, keep_prob=1.0), image)


# ---------------------------------------------------------------- loader

def loader_batches(loader, epoch):
    set_loader_epoch(loader, epoch)
    return list(loader)


def test_train_loader_deterministic_across_workers_and_resume(tiny_precomp, tiny_bert_dir, tokenizer):
    files = open_split(tiny_precomp[0], tiny_precomp[1], "train", img_dim=TINY_IMG_DIM)
    encoder = CaptionEncoder(tokenizer, 64)
    single = train_loader(files, encoder, batch_size=16, workers=0, seed=5)
    epoch0, epoch1 = loader_batches(single, 0), loader_batches(single, 1)
    assert len(epoch0) == 160 // 16
    order0 = torch.cat([b[4] for b in epoch0])
    assert sorted(order0.tolist()) == list(range(160))
    assert order0.tolist() != list(range(160))
    assert order0.tolist() != torch.cat([b[4] for b in epoch1]).tolist()

    resumed = train_loader(files, encoder, batch_size=16, workers=2, seed=5)
    for mine, theirs in zip(loader_batches(resumed, 1), epoch1):
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


def test_train_loader_reads_its_replica_share(tiny_precomp, tiny_bert_dir, tokenizer):
    files = open_split(tiny_precomp[0], tiny_precomp[1], "train", img_dim=TINY_IMG_DIM)
    sampler = torch.utils.data.DistributedSampler(range(160), num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = train_loader(files, CaptionEncoder(tokenizer, 64), batch_size=8, seed=0, num_replicas=2, rank=1)
    batches = loader_batches(loader, 0)
    sampler.set_epoch(0)
    assert torch.cat([b[4] for b in batches]).tolist() == list(sampler)


# ---------------------------------------------------------------- errors

def error_message(*args, **kwargs):
    with pytest.raises(XDimError) as info:
        open_split(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_folder_and_files(tmp_path):
    message = error_message(str(tmp_path), "nowhere_precomp", "train")
    assert "nowhere_precomp" in message and "data folder not found" in message
    write_split(tmp_path / "d", "test", np.zeros((1, 2, 4), np.float32), ["a dog"])
    message = error_message(str(tmp_path), "d", "dev")
    assert "dev_ims.npy" in message and "not found" in message
    os.remove(tmp_path / "d" / "test_caps.txt")
    message = error_message(str(tmp_path), "d", "test")
    assert "test_caps.txt" in message and "not found" in message


def test_bad_caption_count(tmp_path):
    write_split(tmp_path / "d", "test", np.zeros((2, 2, 4), np.float32), ["a dog"] * 7)
    message = error_message(str(tmp_path), "d", "test")
    assert "test_caps.txt" in message and "7 captions for 2 images" in message


def test_wrong_feature_size(tmp_path):
    write_split(tmp_path / "d", "test", np.zeros((2, 2, 4), np.float32), ["a dog"] * 2)
    message = error_message(str(tmp_path), "d", "test", img_dim=2048)
    assert "test_ims.npy" in message and "size 4" in message and "2048" in message


@pytest.mark.parametrize("array, expected", [
    (np.zeros((2, 8), np.float32), "shape (2, 8)"),
    (np.zeros((2, 2, 4), np.int64), "dtype int64"),
])
def test_features_not_3d_float(tmp_path, array, expected):
    write_split(tmp_path / "d", "test", array, ["a dog"] * 2)
    message = error_message(str(tmp_path), "d", "test")
    assert "test_ims.npy" in message and "3-D float array" in message and expected in message


def test_unreadable_features(tmp_path):
    write_split(tmp_path / "d", "test", np.zeros((2, 2, 4), np.float32), ["a dog"] * 2)
    (tmp_path / "d" / "test_ims.npy").write_bytes(b"not an array")
    message = error_message(str(tmp_path), "d", "test")
    assert "test_ims.npy" in message and "is not a .npy file" in message


def test_empty_caption_line(tmp_path):
    write_split(tmp_path / "d", "test", np.zeros((1, 2, 4), np.float32), ["a", "b", "  ", "d", "e"])
    message = error_message(str(tmp_path), "d", "test")
    assert "test_caps.txt" in message and "line 3 is empty" in message


def test_undecodable_caption_line(tmp_path):
    write_split(tmp_path / "d", "test", np.zeros((1, 2, 4), np.float32),
                "a\nb\nc\nd caf\xe9\ne\n".encode("latin-1"))
    message = error_message(str(tmp_path), "d", "test")
    assert "test_caps.txt" in message and "line 4 is not valid UTF-8" in message


def test_tokenizer_folder_without_vocabulary(tmp_path):
    with pytest.raises(XDimError, match="vocab.txt: BERT vocabulary not found"):
        load_tokenizer(str(tmp_path))
