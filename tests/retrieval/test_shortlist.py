"""lib.retrieval.shortlist: the head's vectors against float64 hand computations, and a distillation
that is a function of its seed."""
import numpy as np
import torch

from lib.data.precomp import CaptionEncoder, open_split
from lib.model.bert import load_tokenizer
from lib.model.config import ModelConfig
from lib.model.xdim_model import XDimModel
from lib.retrieval import shortlist

EMBED = 16


def as_numpy(linear):
    return linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()


def gated_sum_by_hand(pool, emb, lengths):
    """The head's (direction (n, size), offset (n,)) of items emb (n, S, d) with `lengths` real elements,
    from its parameters in float64: gates sigmoid(MLP(x)), direction the l2-normalised gated sum of
    Linear(x), offset a Linear of the gate-weighted mean of x."""
    (w1, b1), (w2, b2) = as_numpy(pool.gate[0]), as_numpy(pool.gate[2])
    (wv, bv), (wo, bo) = as_numpy(pool.value), as_numpy(pool.offset)
    directions, offsets = [], []
    for item, length in zip(emb.double().numpy(), lengths):
        x = item[:length]
        gates = 1 / (1 + np.exp(-(np.maximum(x @ w1.T + b1, 0) @ w2.T + b2)[:, 0]))
        direction = (gates[:, None] * (x @ wv.T + bv)).sum(0)
        directions.append(direction / np.linalg.norm(direction))
        offsets.append(wo @ (gates @ x / gates.sum()) + bo[0])
    return np.array(directions), np.array(offsets).reshape(-1)


def test_head_inner_product_is_scaled_cosine_plus_offsets_by_hand():
    # catches: the offset's input divided by the element count instead of the gate sum, padded tokens
    # counted, a scale other than exp(log_scale) or on the wrong side.
    torch.manual_seed(0)
    head = shortlist.ShortlistHead(EMBED, size=8, hidden=4)
    with torch.no_grad():
        head.log_scale.fill_(np.log(7.0))
    img, cap, lens = torch.randn(3, 5, EMBED), torch.randn(4, 6, EMBED), torch.tensor([6, 2, 3, 1])
    cap[1, 2:] = 100.0  # padding: must not count
    with torch.no_grad():
        img_vec, cap_vec = head.images(img), head.captions(cap, lens)
    assert img_vec.shape == (3, 10) and cap_vec.shape == (4, 10)
    u_img, b_img = gated_sum_by_hand(head.image_pool, img, [5, 5, 5])
    u_cap, b_cap = gated_sum_by_hand(head.caption_pool, cap, lens.tolist())
    expected = 7.0 * (u_img @ u_cap.T) + b_img[:, None] + b_cap[None, :]
    np.testing.assert_allclose((img_vec @ cap_vec.t()).double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_distillation_is_a_function_of_its_seed(tiny_precomp, tiny_bert_dir):
    # catches: the head's initial weights drawn from torch's global generator rather than from `seed`
    # (two distillations with one seed would differ).
    torch.manual_seed(0)
    model = XDimModel(ModelConfig(img_dim=32, embed_size=EMBED, bert=tiny_bert_dir))
    split = open_split(*tiny_precomp, "train")
    encoder = CaptionEncoder(load_tokenizer(tiny_bert_dir), 64)

    def distill(seed, global_seed):
        torch.manual_seed(global_seed)  # whatever ran before must not matter
        head, _ = shortlist.distill_head(model, split, encoder, epochs=1, batch_images=32, size=8, hidden=4,
                                         seed=seed, progress=False)
        return head.state_dict()

    first, again, other = distill(5, 1), distill(5, 2), distill(6, 1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
