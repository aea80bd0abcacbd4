"""lib/data/precomp.py: the precomp layout, captions and their tokenization, loaders and their errors;
region drops drawn per caption."""
import itertools
import logging
import os

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_IMG_DIM, TINY_REGIONS, TINY_SPLITS, replace_lines, tiny_model, writable_split

from lib.data.precomp import (
    REGION_KEEP_PROB,
    CaptionDataset,
    CaptionTokenizer,
    ImageDataset,
    PrecompDataset,
    collate_pairs,
    drop_regions,
    first_non_finite,
    open_split,
    set_loader_epoch,
    split_file,
    train_loader,
)
from lib.data.synthetic import demo_vocabulary, write_tiny_bert
from lib.errors import XDimError
from lib.evaluation import scoring
from lib.model.bert import bert_max_positions, load_tokenizer

REAL_BERT = os.path.join(ROOT, "data", "bert-base-uncased")


TINY_WORDS = ["a", "man", "'", "s", "dog", ",", "jumping", "over", "the", "fence", "!",
              "un", "##aff", "##able", "."]


@pytest.fixture(scope="module")
def tiny_vocab_dir(tmp_path_factory):
    return write_tiny_bert(str(tmp_path_factory.mktemp("vocab_only")), TINY_WORDS,
                           max_position_embeddings=16, with_weights=False)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_vocab_dir):
    return load_tokenizer(tiny_vocab_dir)


@pytest.fixture(scope="module")
def real_tokenizer():
    return load_tokenizer(REAL_BERT)


def vocab_ids(folder, tokens):
    """Ids looked up by line number in vocab.txt: the hand-computed reference."""
    with open(os.path.join(folder, "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read().splitlines()
    return [vocab.index(token) for token in tokens]


def test_tiny_vocab_ids_match_tokenizer_and_hand_lookup(tiny_vocab_dir, tiny_tokenizer):
    encoder = CaptionTokenizer(tiny_tokenizer, max_len=64)
    caption = "A MAN'S dog,  jumping over the Fence!! Unaffable zebra."
    expected_tokens = ["[CLS]", "a", "man", "'", "s", "dog", ",", "jumping", "over", "the", "fence",
                       "!", "!", "un", "##aff", "##able", "[UNK]", ".", "[SEP]"]
    expected = vocab_ids(tiny_vocab_dir, expected_tokens)
    # 5 special tokens, then TINY_WORDS in order: "a" is id 5, "un ##aff ##able" 16-18, "." 19
    assert expected == [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15, 16, 17, 18, 1, 19, 3]
    assert encoder.encode(caption) == expected
    assert encoder.encode(caption) == tiny_tokenizer(caption)["input_ids"]


def test_word_pieces_group_sub_tokens_by_word(tiny_tokenizer):
    encoder = CaptionTokenizer(tiny_tokenizer, max_len=64)
    vocab = tiny_tokenizer.get_vocab()
    assert encoder.word_pieces("Unaffable dog!") == [
        [vocab["un"], vocab["##aff"], vocab["##able"]], [vocab["dog"]], [vocab["!"]]]


def test_real_vocab_ids(real_tokenizer):
    encoder = CaptionTokenizer(real_tokenizer, max_len=512)
    caption = "A dog, UNAFFABLE!"
    tokens = ["[CLS]", "a", "dog", ",", "una", "##ffa", "##ble", "!", "[SEP]"]
    expected = vocab_ids(REAL_BERT, tokens)
    assert expected == [101, 1037, 3899, 1010, 14477, 20961, 3468, 999, 102]
    assert encoder.encode(caption) == expected
    for text in [caption, "Two men's bikes lean on a wall near the café.", "a     b...c-d"]:
        assert encoder.encode(text) == real_tokenizer(text)["input_ids"]


def classify(ids, original, mask_id):
    """Outcome of a one-word caption: kept, masked, random or deleted."""
    pieces = ids[1:-1]
    if not pieces:
        return "deleted"
    assert len(pieces) == len(original)
    if pieces == original:
        return "kept"
    if all(p == mask_id for p in pieces):
        return "masked"
    return "random"


def test_perturbation_rates(real_tokenizer):
    encoder = CaptionTokenizer(real_tokenizer, max_len=512)
    original = encoder.word_pieces("unaffable")[0]
    assert len(original) == 3
    rng = np.random.default_rng(0)
    n = 20000
    outcomes = [classify(encoder.encode("unaffable", rng), original, real_tokenizer.mask_token_id)
                for _ in range(n)]
    for outcome, p in [("kept", 0.8), ("masked", 0.1), ("random", 0.02), ("deleted", 0.08)]:
        rate = outcomes.count(outcome) / n
        assert abs(rate - p) < 4.5 * np.sqrt(p * (1 - p) / n), (outcome, rate)


def test_random_replacement_draws_each_sub_token(real_tokenizer):
    encoder = CaptionTokenizer(real_tokenizer, max_len=512)
    original = encoder.word_pieces("unaffable")[0]
    rng = np.random.default_rng(1)
    replaced = [encoder.encode("unaffable", rng)[1:-1] for _ in range(3000)]
    replaced = [r for r in replaced if r and r != original and real_tokenizer.mask_token_id not in r]
    assert len(replaced) > 20
    assert all(len(set(r)) == 3 for r in replaced)  # three independent draws out of 30522
    assert all(0 <= t < len(real_tokenizer) for r in replaced for t in r)


def test_words_perturbed_independently(real_tokenizer):
    encoder = CaptionTokenizer(real_tokenizer, max_len=512)
    rng = np.random.default_rng(2)
    n = 20000
    both_deleted = sum(len(encoder.encode("dog cat", rng)) == 2 for _ in range(n)) / n
    p = 0.08 ** 2
    assert abs(both_deleted - p) < 4.5 * np.sqrt(p * (1 - p) / n)


def test_no_perturbation_without_rng(real_tokenizer):
    encoder = CaptionTokenizer(real_tokenizer, max_len=512)
    caption = "a man rides a horse on the beach"
    plain = real_tokenizer(caption)["input_ids"]
    assert all(encoder.encode(caption) == plain for _ in range(200))


def test_truncation_keeps_sep_and_logs_once(tiny_bert_dir, caplog):
    max_len = bert_max_positions(tiny_bert_dir)
    assert max_len == 64
    tokenizer = load_tokenizer(tiny_bert_dir)
    encoder = CaptionTokenizer(tokenizer, max_len)
    caption = " ".join(["dog"] * 100)
    with caplog.at_level(logging.WARNING, logger="lib.data"):
        ids = encoder.encode(caption)
        encoder.encode(caption + " cat")
    dog = tokenizer.get_vocab()["dog"]
    assert len(ids) == 64
    assert ids == [tokenizer.cls_token_id] + [dog] * 62 + [tokenizer.sep_token_id]
    records = [r for r in caplog.records if r.name == "lib.data"]
    assert len(records) == 1 and "64" in records[0].getMessage()
    perturbed = encoder.encode(caption, np.random.default_rng(0))
    assert len(perturbed) == 64 and perturbed[-1] == tokenizer.sep_token_id


def test_short_caption_not_truncated(tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    encoder = CaptionTokenizer(tokenizer, 64)
    caption = " ".join(["dog"] * 62)
    assert encoder.encode(caption) == tokenizer(caption)["input_ids"]
    assert len(encoder.encode(caption)) == 64


def write_split(folder, split, images, captions):
    """Write `{folder}/{split}_ims.npy` and `{split}_caps.txt` (captions: list of str, or bytes)."""
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{split}_ims.npy"), images)
    data = captions if isinstance(captions, bytes) else ("\n".join(captions) + "\n").encode("utf-8")
    with open(os.path.join(folder, f"{split}_caps.txt"), "wb") as f:
        f.write(data)


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


def is_ordered_subset(rows, image):
    """True when every row of `rows` is a row of `image`, in increasing row order."""
    positions = [int(np.flatnonzero((image == row).all(axis=1))[0]) for row in rows]
    return positions == sorted(set(positions))


def kept_regions(image, raw):
    """(R,) bool: which rows of raw (R, img_dim) the dropped image (R', img_dim) kept."""
    rows = {row.tobytes() for row in image}
    return np.array([row.tobytes() in rows for row in raw])


def test_region_dropping_rate_and_reproducibility(tiny_precomp, encoder):
    files = open_split(*tiny_precomp, "train")
    raw = np.load(os.path.join(*tiny_precomp, "train_ims.npy"))
    dataset = PrecompDataset(files, encoder, train=True, seed=3)
    kept, total, masks = 0, 0, []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            image = dataset[index][0].numpy()
            assert is_ordered_subset(image, raw[index // 5])
            kept, total = kept + image.shape[0], total + TINY_REGIONS
            if epoch == 0:
                masks.append(kept_regions(image, raw[index // 5]))
    assert abs(kept / total - 0.8) < 4.5 * np.sqrt(0.8 * 0.2 / total)

    # The five captions of an image drop regions independently (catches: drops drawn from the image
    # index). Independent draws agree on a region with probability p^2 + (1 - p)^2 = 0.68 (p = 0.8),
    # and two of the 320 pairs of captions of one image repeat a pattern with chance about 3e-4.
    agree, compared = 0, 0
    for image in range(files.n_images):
        for a, b in itertools.combinations(masks[5 * image:5 * image + 5], 2):
            assert not np.array_equal(a, b)
            agree, compared = agree + int((a == b).sum()), compared + len(a)
    assert abs(agree / compared - (REGION_KEEP_PROB ** 2 + (1 - REGION_KEEP_PROB) ** 2)) < 0.03

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


def loader_batches(loader, epoch):
    set_loader_epoch(loader, epoch)
    return list(loader)


def test_train_loader_deterministic_across_workers_and_resume(tiny_precomp, tiny_bert_dir, tokenizer):
    files = open_split(tiny_precomp[0], tiny_precomp[1], "train", img_dim=TINY_IMG_DIM)
    encoder = CaptionTokenizer(tokenizer, 64)
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
    loader = train_loader(files, CaptionTokenizer(tokenizer, 64), batch_size=8, seed=0, num_replicas=2, rank=1)
    batches = loader_batches(loader, 0)
    sampler.set_epoch(0)
    assert torch.cat([b[4] for b in batches]).tolist() == list(sampler)


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


def test_first_non_finite_finds_the_image_and_ignores_sum_overflow():
    images = torch.ones(4, 3, 2)
    assert first_non_finite(images) is None
    images[2, 1, 0] = float("nan")
    images[3, 0, 1] = float("inf")
    assert first_non_finite(images) == 2
    huge = torch.full((2, 3, 2), 3e38)  # finite, but their float32 sum is inf
    assert first_non_finite(huge) is None


def write_captions(tmp_path, data, images=1):
    folder = tmp_path / "d"
    folder.mkdir(exist_ok=True)
    np.save(folder / "train_ims.npy", np.zeros((images, 2, TINY_IMG_DIM), np.float32))
    (folder / "train_caps.txt").write_bytes(data)
    return str(tmp_path), "d"


@pytest.mark.parametrize("invisible", ["\u200b", "\u0301", "\u00a0", " \u200b\u0301\u00a0 "])
def test_captions_that_tokenize_to_nothing_are_rejected_alike(tmp_path, tiny_bert_dir, invisible):
    data = ("a dog\na cat\n" + invisible + "\na red car\na ball\n").encode("utf-8")
    data_path, data_name = write_captions(tmp_path, data)
    with pytest.raises(XDimError, match=r"train_caps\.txt: line 3 is empty"):
        files = open_split(data_path, data_name, "train", img_dim=TINY_IMG_DIM)
        train_loader(files, CaptionTokenizer(load_tokenizer(tiny_bert_dir), 64), batch_size=2)


def test_evaluation_rejects_a_caption_that_tokenizes_to_nothing(tmp_path, tiny_bert_dir):
    data_path, data_name = write_captions(tmp_path, "a dog\n\u200b\u200b\n".encode("utf-8"), images=2)
    split = open_split(data_path, data_name, "train")
    model = tiny_model(tiny_bert_dir, seed=0)
    with pytest.raises(XDimError, match=r"train_caps\.txt: line 2 is empty once tokenized"):
        scoring.encode_split(model, split, CaptionTokenizer(load_tokenizer(tiny_bert_dir), 64), progress=False)


def test_one_trailing_blank_line_is_accepted(tmp_path):
    data_path, data_name = write_captions(tmp_path, b"a\nb\nc\nd\ne\n\n")
    assert open_split(data_path, data_name, "train").captions == ["a", "b", "c", "d", "e"]
    data_path, data_name = write_captions(tmp_path, b"a\r\nb\r\nc\r\nd\r\ne\r\n\r\n")
    assert open_split(data_path, data_name, "train").captions == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("data, line", [(b"a\nb\n\nd\ne\nf\n", 3), (b"a\nb\nc\nd\ne\n\n\n", 6), (b"\n", 1)])
def test_blank_lines_elsewhere_are_still_rejected(tmp_path, data, line):
    data_path, data_name = write_captions(tmp_path, data)
    with pytest.raises(XDimError, match=rf"train_caps\.txt: line {line} is empty; python check_data\.py"):
        open_split(data_path, data_name, "train")


def test_undecodable_byte_is_counted_from_one(tmp_path):
    data_path, data_name = write_captions(tmp_path, "a\nb\nc\nd caf\xe9\ne\n".encode("latin-1"))
    with pytest.raises(XDimError, match=r"line 4 is not valid UTF-8 \(byte 6 of the line\)"):
        open_split(data_path, data_name, "train")


def test_words_outside_the_vocabulary_warn_once_per_split(tmp_path, tiny_precomp, tiny_bert_dir, caplog):
    folder = writable_split(tiny_precomp, tmp_path)
    captions = (folder / "test_caps.txt").read_text(encoding="utf-8").splitlines()
    replace_lines(folder / "test_caps.txt", {3: captions[2] + " \U0001F436", 7: "\U0001F600 " + captions[6]})
    encoder = CaptionTokenizer(load_tokenizer(tiny_bert_dir), 64)
    split = open_split(str(tmp_path / "data"), folder.name, "test")
    with caplog.at_level(logging.WARNING, logger="lib.data"):
        encoder.check_captions(split)
    assert caplog.messages == [
        (f"warning: {folder / 'test_caps.txt'}: 2 of 50 captions hold characters outside the BERT vocabulary, "
        f"read as [UNK] (first at line 3: {(captions[2] + ' ' + chr(0x1F436))[:60]})")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lib.data"):
        encoder.check_captions(open_split(*tiny_precomp, "test"))
    assert caplog.messages == []


@pytest.mark.parametrize("dtype, warns", [(np.float16, False), (np.float64, True)])
def test_half_and_double_features_are_read_as_float32(tmp_path, tiny_precomp, caplog, dtype, warns):
    folder = writable_split(tiny_precomp, tmp_path)
    original = np.load(folder / "test_ims.npy")
    stored = (original * np.float32(1 + 2 ** -20)).astype(dtype)  # float64 values float32 cannot hold
    np.save(folder / "test_ims.npy", stored)
    with caplog.at_level(logging.WARNING, logger="lib.data"):
        split = open_split(str(tmp_path / "data"), folder.name, "test", img_dim=original.shape[2])
    expected = [(f"warning: {folder / 'test_ims.npy'}: float64 features are rounded to float32 when read "
                "(float32 or float16 files hold the same and take less disk)")]
    assert caplog.messages == (expected if warns else [])
    image, index = ImageDataset(split)[2]
    assert index == 2 and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(stored[2].astype(np.float32)))


def test_split_file_names_the_same_split_beside_features_or_captions():
    assert split_file(os.path.join("d", "test_ims.npy"), "_ids.txt") == os.path.join("d", "test_ids.txt")
    assert split_file("d/testall_caps.txt", "_ims.npy") == "d/testall_ims.npy"
    # catches: str.replace of the ending anywhere in the path rather than at its end.
    assert split_file("x_ims.npy_old/dev_caps.txt", "_boxes.npy") == "x_ims.npy_old/dev_boxes.npy"
    assert split_file("d/test.npy", "_ids.txt") is None
