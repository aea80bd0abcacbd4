"""Caption processing (docs/data.md, "Caption processing"): word splitting, WordPiece ids, perturbation, truncation."""
import logging
import os

import numpy as np
import pytest

from lib.data.precomp import CaptionEncoder
from lib.data.synthetic import write_tiny_bert
from lib.model.bert import bert_max_positions, load_tokenizer

REAL_BERT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "data", "bert-base-uncased")
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
    encoder = CaptionEncoder(tiny_tokenizer, max_len=64)
    caption = "A MAN'S dog,  jumping over the Fence!! Unaffable zebra."
    expected_tokens = ["[CLS]", "a", "man", "'", "s", "dog", ",", "jumping", "over", "the", "fence",
                       "!", "!", "un", "##aff", "##able", "[UNK]", ".", "[SEP]"]
    expected = vocab_ids(tiny_vocab_dir, expected_tokens)
    # 5 special tokens, then TINY_WORDS in order: "a" is id 5, "un ##aff ##able" 16-18, "." 19
    assert expected == [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15, 16, 17, 18, 1, 19, 3]
    assert encoder.encode(caption) == expected
    assert encoder.encode(caption) == tiny_tokenizer(caption)["input_ids"]


def test_word_pieces_group_sub_tokens_by_word(tiny_tokenizer):
    encoder = CaptionEncoder(tiny_tokenizer, max_len=64)
    vocab = tiny_tokenizer.get_vocab()
    assert encoder.word_pieces("Unaffable dog!") == [
        [vocab["un"], vocab["##aff"], vocab["##able"]], [vocab["dog"]], [vocab["!"]]]


def test_real_vocab_ids(real_tokenizer):
    encoder = CaptionEncoder(real_tokenizer, max_len=512)
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
    encoder = CaptionEncoder(real_tokenizer, max_len=512)
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
    encoder = CaptionEncoder(real_tokenizer, max_len=512)
    original = encoder.word_pieces("unaffable")[0]
    rng = np.random.default_rng(1)
    replaced = [encoder.encode("unaffable", rng)[1:-1] for _ in range(3000)]
    replaced = [r for r in replaced if r and r != original and real_tokenizer.mask_token_id not in r]
    assert len(replaced) > 20
    assert all(len(set(r)) == 3 for r in replaced)  # three independent draws out of 30522
    assert all(0 <= t < len(real_tokenizer) for r in replaced for t in r)


def test_words_perturbed_independently(real_tokenizer):
    encoder = CaptionEncoder(real_tokenizer, max_len=512)
    rng = np.random.default_rng(2)
    n = 20000
    both_deleted = sum(len(encoder.encode("dog cat", rng)) == 2 for _ in range(n)) / n
    p = 0.08 ** 2
    assert abs(both_deleted - p) < 4.5 * np.sqrt(p * (1 - p) / n)


def test_no_perturbation_without_rng(real_tokenizer):
    encoder = CaptionEncoder(real_tokenizer, max_len=512)
    caption = "a man rides a horse on the beach"
    plain = real_tokenizer(caption)["input_ids"]
    assert all(encoder.encode(caption) == plain for _ in range(200))


def test_truncation_keeps_sep_and_logs_once(tiny_bert_dir, caplog):
    max_len = bert_max_positions(tiny_bert_dir)
    assert max_len == 64
    tokenizer = load_tokenizer(tiny_bert_dir)
    encoder = CaptionEncoder(tokenizer, max_len)
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
    encoder = CaptionEncoder(tokenizer, 64)
    caption = " ".join(["dog"] * 62)
    assert encoder.encode(caption) == tokenizer(caption)["input_ids"]
    assert len(encoder.encode(caption)) == 64
