"""lib/analysis/figures.py: every figure is a valid PNG; a missing matplotlib is one line."""
import numpy as np
import pytest
from helpers import planted_blocks, read_png

from lib.analysis import figures
from lib.analysis import statistics as analysis
from lib.errors import XDimError


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
                           np.array([0.3, 0.2, 0.6, -0.1]), 0.42, "image 0, caption 0: a dog", paths["pair"])
    for path in paths.values():
        image = read_png(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)


def test_missing_matplotlib_is_one_line_with_the_install_command(tmp_path, no_matplotlib):
    with pytest.raises(XDimError) as error:
        figures.dependencies_histogram(np.array([1, 2, 2]), str(tmp_path / "h.png"))
    assert "pip install matplotlib" in str(error.value) and "\n" not in str(error.value)
