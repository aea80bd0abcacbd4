"""lib/model/similarity/xdim.py against a float64, one-pair-at-a-time transcription of the equations."""
import pytest
import torch
from helpers import random_inputs, relative_error

from lib.model.similarity import build_similarity, reference
from lib.model.similarity.transcription import xdim_scores as reference_scores
from lib.model.similarity.xdim import XDimSimilarity


@pytest.mark.parametrize("d", [8, 33, 64, 256])
def test_scores_match_float64_transcription(d):
    torch.manual_seed(d)
    sim = XDimSimilarity(d)
    img, cap, lens = random_inputs(d)
    ours = sim(img, cap, lens, rows_per_block=16).detach().numpy()  # several caption and image blocks
    ref = reference_scores(sim, img, cap, lens)
    assert ours.shape == (3, 5)
    assert relative_error(ours, ref) <= 1e-5


@pytest.mark.parametrize("d", [8, 33, 64, 256])
def test_fast_kernel_matches_readable_reference(d):
    """The kernel (flattened real tokens, folded norms, blocks) against lib/model/similarity/reference.py."""
    torch.manual_seed(100 + d)
    sim = XDimSimilarity(d).double()
    img, cap, lens = random_inputs(d, n_img=4, n_cap=7, seed=d)
    img, cap = img.double(), cap.double()
    with torch.no_grad():
        weights = reference.dependency_weights(sim.E, sim.lam, sim.log_t_mask)
        expected = reference.xdim_steps(img, cap, lens, weights["W"], weights["delta"], sim.log_t_attn)["scores"]
        float64 = sim(img, cap, lens, rows_per_block=12).numpy()
        float32 = sim.float()(img.float(), cap.float(), lens, rows_per_block=12).numpy()
    assert relative_error(float64, expected.numpy()) <= 1e-12
    assert relative_error(float32, expected.numpy()) <= 1e-5


def test_float64_module_matches_transcription_tightly():
    torch.manual_seed(0)
    sim = XDimSimilarity(24).double()
    img, cap, lens = random_inputs(24)
    ours = sim(img.double(), cap.double(), lens, rows_per_block=10).detach().numpy()
    assert relative_error(ours, reference_scores(sim, img.double(), cap.double(), lens)) <= 1e-12


def test_block_size_does_not_change_scores():
    torch.manual_seed(1)
    sim = XDimSimilarity(32)
    img, cap, lens = random_inputs(32, n_img=6, n_cap=11)
    whole = sim(img, cap, lens)
    assert torch.allclose(sim(img, cap, lens, rows_per_block=7), whole, rtol=0, atol=1e-6)


def test_mask_drives_entries_to_zero_or_above_point_seven():
    torch.manual_seed(2)
    sim = XDimSimilarity(128)
    P = torch.sigmoid(sim.E.detach())
    theta = P.mean(1, keepdim=True) + sim.lam.detach().unsqueeze(1) * P.std(1, keepdim=True)
    mask = torch.tanh(torch.exp(torch.exp(sim.log_t_mask.detach()) * (P - theta)))
    gap = P - theta
    assert mask[gap < -0.1].max() < 1e-2
    assert mask[gap > 0].min() > 0.7
    W, delta = sim.dependency_weights()
    raw_norm = (mask * P).double().norm(dim=1)
    assert (gap > 0).any() and (gap < -0.1).any()
    # Unit rows, up to the epsilon on the norm (which matters for rows whose
    # entries all sit below the threshold, so their raw norm is tiny).
    assert torch.allclose(W.detach().double().norm(dim=1), raw_norm / (raw_norm + 1e-8), atol=1e-6)
    assert W.detach().norm(dim=1).min() > 0.99
    assert torch.allclose(delta, W.sum(0))


def test_caption_score_independent_of_batch_and_padding():
    torch.manual_seed(3)
    sim = XDimSimilarity(16)
    img, cap, lens = random_inputs(16, n_img=4, n_cap=6, max_len=8)
    full = sim(img, cap, lens, rows_per_block=20)
    alone = sim(img, cap[2:3, :lens[2]], lens[2:3])
    assert torch.allclose(full[:, 2:3], alone, atol=1e-6)
    padded = torch.cat([cap, 100 * torch.randn(6, 5, 16)], dim=1)  # garbage past every length
    assert torch.allclose(sim(img, padded, lens, rows_per_block=20), full, atol=1e-6)


def test_masked_regions_take_no_part():
    torch.manual_seed(4)
    sim = XDimSimilarity(16)
    img, cap, lens = random_inputs(16, n_img=2, n_cap=3, regions=6)
    img_lens = torch.tensor([4, 6])
    padded = img.clone()
    padded[0, 4:] = 5.0
    masked = sim(padded, cap, lens, img_lens)
    assert torch.allclose(masked[0], sim(img[:1, :4], cap, lens)[0], atol=1e-6)
    assert torch.allclose(masked[1], sim(img[1:], cap, lens)[0], atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(5)
    sim = XDimSimilarity(12)
    img, cap, lens = random_inputs(12)
    img.requires_grad_(True)
    sim(img, cap, lens, rows_per_block=8).sum().backward()
    for name, p in sim.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert img.grad.abs().sum() > 0


def test_readable_reference_matches_pair_by_pair_transcription():
    torch.manual_seed(6)
    sim = XDimSimilarity(20).double()
    img, cap, lens = random_inputs(20, n_img=3, n_cap=4)
    img, cap = img.double(), cap.double()
    with torch.no_grad():
        weights = reference.dependency_weights(sim.E, sim.lam, sim.log_t_mask)
        steps = reference.xdim_steps(img, cap, lens, weights["W"], weights["delta"], sim.log_t_attn)
    assert steps["scores"].shape == (3, 4) and steps["attention"].shape == (3, 4, 9, 7)
    assert relative_error(steps["scores"].numpy(), reference_scores(sim, img, cap, lens)) <= 1e-12
    torch.testing.assert_close(steps["attention"].sum(dim=3), torch.ones(3, 4, 9, dtype=torch.float64))


# ---------------------------------------------------------------- explain: the attention behind a score

def _explain_inputs(d=12, images=3, regions=7, length=6, real=4):
    torch.manual_seed(0)
    img = torch.randn(images, regions, d, dtype=torch.float64)
    cap = torch.randn(1, length, d, dtype=torch.float64)
    return img, cap, torch.tensor([real]), torch.tensor([regions, regions - 2, regions - 1])


@pytest.mark.parametrize("name", ["xdim", "reference", "cosine", "xdim_nodelta", "xdim_nomask"])
def test_explained_scores_are_the_module_scores_in_float64(name):
    sim = build_similarity(name, 12).double()
    img, cap, lens, img_lens = _explain_inputs()
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
    img, cap, lens, img_lens = _explain_inputs()
    with torch.no_grad():
        parts = reference.dependency_weights(sim.E, sim.lam, sim.log_t_mask)
        steps = reference.xdim_steps(img, cap, lens, parts["W"], parts["delta"], sim.log_t_attn, img_lens)
    explained = sim.explain(img, cap, lens, img_lens)
    torch.testing.assert_close(explained["attention"], steps["attention"][:, 0, :4], rtol=0, atol=1e-12)
    torch.testing.assert_close(explained["word_scores"], steps["word_scores"][:, 0, :4], rtol=0, atol=1e-12)


def test_a_region_made_to_match_a_word_draws_its_attention():
    """Region 5 of image 0 is word 2, every other region its opposite: word 2 attends to region 5 most."""
    sim = build_similarity("xdim", 12).double()
    img, cap, lens, _ = _explain_inputs()
    img[0] = -cap[0, 2] + 0.1 * img[0]
    img[0, 5] = cap[0, 2]
    attention = sim.explain(img, cap, lens)["attention"]
    assert int(attention[0, 2].argmax()) == 5
