"""Similarity.explain: the word-to-region attention and word scores behind a score, without changing it."""
import pytest
import torch

from lib.model.similarity import build_similarity
from lib.model.similarity.reference import dependency_weights, xdim_steps


def _inputs(d=12, images=3, regions=7, length=6, real=4):
    torch.manual_seed(0)
    img = torch.randn(images, regions, d, dtype=torch.float64)
    cap = torch.randn(1, length, d, dtype=torch.float64)
    return img, cap, torch.tensor([real]), torch.tensor([regions, regions - 2, regions - 1])


@pytest.mark.parametrize("name", ["xdim", "reference", "cosine", "xdim_nodelta", "xdim_nomask"])
def test_explained_scores_are_the_module_scores_in_float64(name):
    sim = build_similarity(name, 12).double()
    img, cap, lens, img_lens = _inputs()
    explained = sim.explain(img, cap, lens, img_lens)
    with torch.no_grad():
        direct = sim(img, cap, lens, img_lens)[:, 0]
    torch.testing.assert_close(explained["scores"], direct, rtol=0, atol=1e-13)
    torch.testing.assert_close(explained["word_scores"].mean(dim=1), direct, rtol=0, atol=1e-13)
    attention = explained["attention"]
    assert attention.shape == (3, 4, 7)
    torch.testing.assert_close(attention.sum(dim=2), torch.ones(3, 4, dtype=torch.float64), rtol=0, atol=1e-12)
    assert attention[1, :, 5:].abs().max() == 0 and attention[2, :, 6:].abs().max() == 0  # padded regions


def test_fast_attention_equals_the_step_by_step_softmax():
    sim = build_similarity("xdim", 12).double()
    img, cap, lens, img_lens = _inputs()
    with torch.no_grad():
        parts = dependency_weights(sim.E, sim.lam, sim.log_t_mask)
        steps = xdim_steps(img, cap, lens, parts["W"], parts["delta"], sim.log_t_attn, img_lens)
    explained = sim.explain(img, cap, lens, img_lens)
    torch.testing.assert_close(explained["attention"], steps["attention"][:, 0, :4], rtol=0, atol=1e-12)
    torch.testing.assert_close(explained["word_scores"], steps["word_scores"][:, 0, :4], rtol=0, atol=1e-12)


def test_a_region_made_to_match_a_word_draws_its_attention():
    """Region 5 of image 0 is word 2, every other region its opposite: word 2 attends to region 5 most."""
    sim = build_similarity("xdim", 12).double()
    img, cap, lens, _ = _inputs()
    img[0] = -cap[0, 2] + 0.1 * img[0]
    img[0, 5] = cap[0, 2]
    attention = sim.explain(img, cap, lens)["attention"]
    assert int(attention[0, 2].argmax()) == 5
