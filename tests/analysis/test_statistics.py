"""lib/analysis/statistics.py: dependency order, participation and concept statistics against hand-made
references; occurrences at the truncation boundary and at one caption per image."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import (
    TINY_IMG_DIM,
    D,
    assert_contiguous,
    hand_mask,
    planted_blocks,
    present_and_absent_objects,
    whole_word_count,
)

from lib.analysis import statistics as analysis
from lib.data.precomp import CaptionTokenizer, open_split
from lib.errors import XDimError
from lib.model.bert import load_tokenizer
from lib.model.config import ModelConfig
from lib.model.similarity.xdim import XDimSimilarity
from lib.model.xdim_model import XDimModel


@pytest.mark.parametrize("sizes, seed", [([5, 8, 3, 8], 0), ([1, 12, 2, 7, 10], 1), ([16, 16, 16, 16], 2)])
def test_dependency_order_puts_each_planted_block_together(sizes, seed):
    W, blocks = planted_blocks(sizes, seed)
    order = analysis.dependency_order(W)
    assert sorted(order.tolist()) == list(range(sum(sizes)))
    assert_contiguous(order, blocks)
    assert np.array_equal(analysis.dependency_order(W), order)  # deterministic


def test_dependency_order_finds_a_block_that_a_random_order_splits():
    # The identity order of a permuted W almost surely splits the blocks: the check can fail.
    W, blocks = planted_blocks([6, 6, 6], seed=3)
    with pytest.raises(AssertionError):
        assert_contiguous(np.arange(18), blocks)
    assert_contiguous(analysis.dependency_order(W), blocks)


# Similarities S = (|W| + |W^T|) / 2 of 6 dimensions, chosen so that average linkage
# builds a tree that single and complete linkage do not:
#   1. {1, 4} (0.9)  2. {0, 5} (0.8)
#   3. 3 joins {0, 5}: mean(0.6, 0.5) = 0.55 beats 2-{0, 5} mean(0.7, 0.1) = 0.4
#      (single linkage would take 2-0 at 0.7 here)
#   4. 2 joins {1, 4}: mean(0.6, 0.05) = 0.325 beats 2-{0, 3, 5} mean(0.7, 0.1, 0.1) = 0.3
#      (complete linkage would take 2-{0, 3, 5} at min 0.1 over min 0.05)
#   5. {0, 3, 5} with {1, 2, 4}.
# scipy numbers clusters 6 = {1, 4}, 7 = {0, 5}, 8 = 3 + 7, 9 = 2 + 6, 10 = 8 + 9 and lays out
# each as its lower-numbered part first: 8 = [3, 0, 5], 9 = [2, 1, 4].
# W holds each S[i, j] in one triangle (twice over, the other entry 0), except that S[0, 5]
# = (1.2 + |-0.4|) / 2; its diagonal, which must not count, is large.
HAND_W = np.array([
    [3.0, 0.2, 1.4, 1.2, 0.2, 1.2],
    [0.0, 3.0, 1.2, 0.2, 1.8, 0.2],
    [0.0, 0.0, 3.0, 0.2, 0.1, 0.2],
    [0.0, 0.0, 0.0, 3.0, 0.2, 1.0],
    [0.0, 0.0, 0.0, 0.0, 3.0, 0.2],
    [-0.4, 0.0, 0.0, 0.0, 0.0, 3.0],
])


def test_dependency_order_is_the_average_linkage_tree_worked_out_by_hand():
    assert analysis.dependency_order(HAND_W).tolist() == [3, 0, 5, 2, 1, 4]
    assert analysis.dependency_order(HAND_W.T).tolist() == [3, 0, 5, 2, 1, 4]  # symmetric in W, W^T


def test_dependency_order_of_one_dimension_and_of_a_non_square_w():
    assert analysis.dependency_order([[0.7]]).tolist() == [0]
    with pytest.raises(ValueError, match=r"W must be square, got shape \(2, 3\)"):
        analysis.dependency_order(np.zeros((2, 3)))


def test_missing_scipy_is_one_line_with_the_install_command(no_scipy):
    with pytest.raises(XDimError) as error:
        analysis.dependency_order(HAND_W)
    assert str(error.value) == analysis.SCIPY_HINT
    assert "pip install scipy" in analysis.SCIPY_HINT and "\n" not in analysis.SCIPY_HINT


def test_dependencies_per_dimension_counts_entries_above_one_half():
    mask = np.array([[0.9, 0.5, 0.51], [0.0, 0.2, 0.4], [1.0, 1.0, 1.0]])
    assert analysis.dependencies_per_dimension(mask).tolist() == [2, 0, 3]


def test_participation_probabilities_rank_the_planted_dimensions_first():
    rng = np.random.default_rng(0)
    d, planted, top_k = 40, [31, 4, 17], 5
    vectors = rng.normal(0.0, 0.1, (200, d))
    vectors[:, planted] += rng.uniform(1.0, 2.0, (200, len(planted)))
    probabilities = analysis.participation_probabilities(vectors, top_k)
    assert probabilities[planted].tolist() == [1.0, 1.0, 1.0]
    assert probabilities.sum() == pytest.approx(top_k)
    assert sorted(analysis.rank_dimensions(probabilities)[:3].tolist()) == sorted(planted)
    assert np.delete(probabilities, planted).max() < 0.5


def test_participation_probabilities_by_hand():
    vectors = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, -1.0, 4.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # Top 2 of each row: {1, 3}, {0, 2}, {0, 1} (the tie 0 / 0 in the last row is not reached).
    assert analysis.participation_probabilities(vectors, 2).tolist() == [2 / 3, 2 / 3, 1 / 3, 1 / 3]
    assert analysis.rank_dimensions([1 / 3, 2 / 3, 2 / 3, 0.0]).tolist() == [1, 2, 0, 3]


def test_shared_top_dimensions():
    shared = analysis.shared_top_dimensions([[1, 2, 3], [3, 4, 5], [2, 3, 9]])
    assert shared.tolist() == [[3, 1, 2], [1, 3, 1], [2, 1, 3]]


def xdim_with(E, lam, log_t_mask, log_t_attn):
    sim = XDimSimilarity(E.shape[0])
    with torch.no_grad():
        sim.E.copy_(torch.as_tensor(E))
        sim.lam.copy_(torch.as_tensor(lam))
        sim.log_t_mask.fill_(log_t_mask)
        sim.log_t_attn.fill_(log_t_attn)
    return sim


def test_statistics_equal_the_equations_by_hand():
    rng = np.random.default_rng(4)
    E, lam = rng.normal(0.0, 2.0, (7, 7)), rng.uniform(0.0, 1.0, 7)
    mask, theta = hand_mask(E, lam, 1.5)
    assert np.abs(mask - 0.5).min() > 1e-3  # no entry so close to 0.5 that float32 could flip it
    assert 0.1 < (mask > 0.5).mean() < 0.9
    stats = xdim_with(E, lam, 1.5, 0.7).statistics()
    assert stats["mask_density"] == (mask > 0.5).sum() / 49
    assert stats["mean_threshold"] == pytest.approx(theta.mean(), rel=1e-6)
    assert stats["t_mask"] == pytest.approx(np.exp(1.5), rel=1e-6)
    assert stats["t_attn"] == pytest.approx(np.exp(0.7), rel=1e-6)


class PlantedEmbeddings:
    """Stands in for XDimModel in the concept analysis: fixed random token embeddings, except
    that one word's token and every image region are strongest on the planted dimensions."""

    def __init__(self, tokenizer, word, planted, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.functional.normalize(torch.randn(len(tokenizer), D, generator=gen), dim=1)
        row = 0.1 * torch.randn(D, generator=gen)
        row[planted] = 1.0
        self.table[tokenizer.convert_tokens_to_ids(word)] = row / row.norm()
        self.projection = 0.02 * torch.randn(TINY_IMG_DIM, D, generator=gen)
        self.planted = planted
        self.sim = XDimSimilarity(D)
        self.config = SimpleNamespace(embed_size=D)
        self.device = torch.device("cpu")

    def val_start(self):
        pass

    def encode_captions(self, captions, lengths):
        return self.table[captions]

    def encode_images(self, images):
        regions = images @ self.projection
        regions[..., self.planted] += 1.0
        return torch.nn.functional.normalize(regions, dim=-1)


def test_concept_statistics_rank_the_planted_dimensions_first(tiny_precomp, tiny_bert_dir, test_captions):
    word = present_and_absent_objects(test_captions)[0][0]
    planted = [29, 3, 12]
    tokenizer = load_tokenizer(tiny_bert_dir)
    model = PlantedEmbeddings(tokenizer, word, planted)
    split = open_split(*tiny_precomp, "test")
    encoder = CaptionTokenizer(tokenizer, 64)
    found = analysis.occurrences_in_split(encoder, split, [word], progress=False)
    result = analysis.concept_statistics(model, split, encoder, found, top_k=3, progress=False)[word]
    assert result["occurrences"] == whole_word_count(test_captions, word) > 1
    expected = np.zeros(D)
    expected[planted] = 1.0
    assert result["probabilities"].tolist() == expected.tolist()
    assert sorted(analysis.rank_dimensions(result["probabilities"])[:3].tolist()) == sorted(planted)


def test_participation_ties_at_the_top_k_boundary_go_to_the_lower_dimension():
    # catches: an unstable or reversed sort (ties then go to a higher or arbitrary dimension).
    d = 64
    vectors = np.zeros((2, d))
    vectors[0, 40] = 1.0             # then 63 dimensions tied at 0: top 3 = 40, 0, 1
    vectors[1, [5, 9, 30, 50]] = 0.5  # four tied for three places: 5, 9, 30
    probabilities = analysis.participation_probabilities(vectors, 3)
    expected = np.zeros(d)
    expected[[40, 0, 1]] += 0.5
    expected[[5, 9, 30]] += 0.5
    np.testing.assert_array_equal(probabilities, expected)
    # The concept report's top-k: equal probabilities at the boundary, lower dimension first.
    assert analysis.rank_dimensions(probabilities)[:3].tolist() == [0, 1, 5]


def test_an_occurrence_cut_off_by_truncation_is_not_counted(tiny_bert_dir):
    # catches: `position + pieces <= max_len` for `<` (a word whose place [SEP] took would be counted).
    encoder = CaptionTokenizer(load_tokenizer(tiny_bert_dir), 6)  # [CLS], 4 word pieces, [SEP]
    captions = ["dog cat cat cat", "cat cat cat dog", "cat cat cat cat dog", "dog"]
    found = analysis.find_occurrences(encoder, captions, ["dog"], progress=False)["dog"]
    assert [tuple(o) for o in found] == [(0, 1, 1), (1, 4, 1), (3, 1, 1)]
    dog = encoder.word_pieces("dog")[0][0]
    # what the model sees: dog at position 4 of caption 1; [SEP] where dog was, at 5, in caption 2
    assert encoder.encode(captions[1])[4] == dog and encoder.encode(captions[2])[5] == encoder.sep_id


def write_split(folder, images, captions):
    os.makedirs(folder / "one_precomp")
    np.save(folder / "one_precomp" / "test_ims.npy", images)
    (folder / "one_precomp" / "test_caps.txt").write_text("".join(f"{c}\n" for c in captions))
    return open_split(str(folder), "one_precomp", "test", img_dim=TINY_IMG_DIM)


def test_occurrence_vectors_pair_each_caption_with_its_image_at_one_caption_per_image(tmp_path, tiny_bert_dir):
    # catches: `caption // 5` for `caption // captions_per_image` (caption 5 scored against image 1).
    torch.manual_seed(0)
    model = XDimModel(ModelConfig(img_dim=TINY_IMG_DIM, embed_size=16, bert=tiny_bert_dir))
    encoder = CaptionTokenizer(load_tokenizer(tiny_bert_dir), 64)
    images = np.random.default_rng(0).standard_normal((6, 4, TINY_IMG_DIM)).astype(np.float32)
    captions = [f"a dog and a {thing}" for thing in ("cat", "cow", "bus", "cup", "bed", "car")]
    split = write_split(tmp_path / "all", images, captions)
    alone = write_split(tmp_path / "fifth", images[5:], captions[5:])  # image 5 and caption 5 only
    assert split.captions_per_image == 1
    occurrence = analysis.find_occurrences(encoder, captions, ["dog"], progress=False)["dog"][5]
    vectors = analysis.occurrence_vectors(model, split, encoder, [occurrence], progress=False)
    expected = analysis.occurrence_vectors(model, alone, encoder, [occurrence._replace(caption=0)], progress=False)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6, atol=1e-9)
    other = analysis.occurrence_vectors(model, split, encoder, [occurrence._replace(caption=1)], progress=False)
    assert not np.allclose(other, expected, atol=1e-4)  # another image gives another vector
