"""lib/evaluation/scoring.py: sharded scores against a float64 reference."""
import numpy as np
import torch
from helpers import _padded_batch

from lib.evaluation import encoding, scoring
from lib.model.similarity import Similarity


class ToySimilarity(Similarity):
    """Mean over real words of the best region dot product; records the caption shapes it gets."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def score(self, img, cap, cap_lens, img_lens, prepared):
        self.calls.append(tuple(cap.shape))
        dots = torch.einsum("ird,cld->iclr", img, cap).amax(-1)
        mask = (torch.arange(cap.shape[1]) < cap_lens[:, None]).float()
        return (dots * mask).sum(-1) / cap_lens


def test_sharded_scores_equal_float64_reference():
    g = torch.Generator().manual_seed(3)
    img = torch.randn(11, 4, 6, generator=g)
    emb, lengths = _padded_batch(4, 23, 8, 6)
    ragged = encoding.RaggedCaptions.from_padded(emb, lengths)
    toy = ToySimilarity()
    sims = scoring.score_sharded(img, ragged, toy, rows_per_block=12, progress=False)
    assert sims.dtype == np.float32 and sims.shape == (11, 23)
    assert len(toy.calls) > 11 * 2  # really blocked in both directions
    assert min(shape[1] for shape in toy.calls) < max(lengths)  # short captions not padded to the longest
    reference = np.zeros((11, 23))
    for i in range(11):
        for c in range(23):
            words = emb[c, :int(lengths[c])].double()
            reference[i, c] = (words @ img[i].double().T).max(1).values.mean()
    np.testing.assert_allclose(sims, reference, rtol=1e-5, atol=1e-6)
    unsharded = scoring.score_sharded(img, ragged, ToySimilarity(), rows_per_block=10 ** 9, progress=False)
    np.testing.assert_allclose(sims, unsharded, rtol=1e-6, atol=1e-7)
