"""concept_WORD.png: the left panel shades the top_k only, the right one shows the dimensions that
take part (at least top_k), with tick labels of a legible size."""
import numpy as np
import pytest

from lib.analysis import figures

pytest.importorskip("matplotlib")


def _drawn(monkeypatch, probabilities, top_k):
    saved = {}
    monkeypatch.setattr(figures, "_save", lambda figure, path: saved.update(figure=figure))
    figures.concept_profile("dog", np.asarray(probabilities), 7, top_k, "unused.png")
    return saved["figure"].axes


def test_left_panel_shades_the_top_k_and_right_panel_the_dimensions_taking_part(monkeypatch):
    probabilities = np.zeros(64)
    probabilities[[5, 58, 45, 9, 11]] = [0.9, 0.8, 0.6, 0.4, 0.3]  # sums to top_k = 3
    whole, detail = _drawn(monkeypatch, probabilities, top_k=3)
    (span,) = whole.patches
    xs = span.get_patch_transform().transform(span.get_path().vertices)[:, 0]  # data x of the shaded band
    assert (xs.min(), xs.max()) == (0.5, 3.5)
    assert [t.get_text() for t in detail.get_xticklabels()] == ["5", "58", "45", "9", "11"]
    assert [bar.get_facecolor() for bar in detail.patches[:3]] == [detail.patches[0].get_facecolor()] * 3
    assert detail.patches[3].get_facecolor() != detail.patches[0].get_facecolor()
    assert min(t.get_fontsize() for t in detail.get_xticklabels() + whole.get_xticklabels()) >= 8


def test_at_least_top_k_bars_even_when_fewer_dimensions_take_part(monkeypatch):
    probabilities = np.zeros(16)
    probabilities[2] = 1.0
    _, detail = _drawn(monkeypatch, probabilities, top_k=3)
    assert len(detail.patches) == 3
