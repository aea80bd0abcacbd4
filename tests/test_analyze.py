"""analyze.py and lib/analysis.py: dependency order, mask statistics, concept statistics, figures."""
import sys

import numpy as np
import pytest

from lib import analysis, figures
from lib.errors import XDimError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def planted_blocks(sizes, seed=0):
    """W (d, d) with blocks of mutually dependent dimensions under a random permutation, and the blocks."""
    rng = np.random.default_rng(seed)
    d = sum(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    same = labels[:, None] == labels[None, :]
    W = np.where(same, rng.uniform(0.5, 1.0, (d, d)), rng.uniform(0.0, 0.2, (d, d)))
    permutation = rng.permutation(d)
    W = W[np.ix_(permutation, permutation)]
    labels = labels[permutation]
    return W, [np.flatnonzero(labels == b) for b in range(len(sizes))]


def assert_contiguous(order, blocks):
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    for block in blocks:
        places = np.sort(position[block])
        assert places[-1] - places[0] == len(block) - 1, f"block {block.tolist()} at positions {places.tolist()}"


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


def read_png(path):
    from matplotlib.image import imread
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    return imread(path)


def test_every_figure_is_a_valid_png(tmp_path):
    rng = np.random.default_rng(0)
    W, _ = planted_blocks([4, 6, 2])
    order = analysis.dependency_order(W)
    mask = (W > 0.4).astype(float)
    paths = {name: str(tmp_path / f"{name}.png") for name in
             ("W", "mask", "deps", "thresholds", "concept", "overlap", "pair")}
    figures.dependency_heatmap(W, order, paths["W"])
    figures.mask_heatmap(mask, order, paths["mask"], density=mask.mean())
    figures.dependencies_histogram(analysis.dependencies_per_dimension(mask), paths["deps"])
    figures.thresholds_figure(rng.random(12), rng.random(12), 54.6, 14.3, paths["thresholds"])
    figures.concept_profile("dog", rng.random(12), 7, 2, paths["concept"])
    figures.concept_overlap(["dog", "cat"], np.array([[2, 1], [1, 2]]), 2, paths["overlap"])
    figures.pair_attention(["[CLS]", "a", "dog", "[SEP]"], rng.dirichlet(np.ones(6), 4),
                           np.array([0.3, 0.2, 0.6, -0.1]), 0.42, paths["pair"])
    for path in paths.values():
        image = read_png(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)


def test_missing_matplotlib_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(XDimError) as error:
        figures.dependencies_histogram(np.array([1, 2, 2]), str(tmp_path / "h.png"))
    assert "pip install matplotlib" in str(error.value) and "\n" not in str(error.value)
