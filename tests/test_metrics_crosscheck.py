"""Our Recall@K against torchmetrics' RetrievalHitRate (a test dependency: pip install torchmetrics).

The image-text R@K is a hit rate: a query counts when at least one of its true items is among
its K best-scored. On tie-free random matrices the two must agree exactly, whatever the
captions per image and in both directions.
"""
import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate

from lib.evaluation import metrics


def hit_rate(scores, relevant, k):
    """torchmetrics' hit rate in percent. scores, relevant: (n_queries, n_items) float / bool."""
    queries = torch.arange(scores.shape[0])[:, None].expand(scores.shape)
    metric = RetrievalHitRate(top_k=k)
    return 100 * float(metric(torch.as_tensor(scores).flatten(), torch.as_tensor(relevant).flatten(),
                              indexes=queries.flatten()))


@pytest.mark.parametrize("cpi", [1, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_recall_at_k_equals_torchmetrics_hit_rate(cpi, seed):
    n_images = 40
    rng = np.random.default_rng(seed)
    # A permutation of distinct values: no ties. Raising the true pairs a little gives every K some hits.
    sims = rng.permutation(n_images * cpi * n_images).reshape(n_images, cpi * n_images).astype(np.float64)
    truth = np.arange(cpi * n_images)[None, :] // cpi == np.arange(n_images)[:, None]  # (n_img, n_cap)
    sims += truth * rng.integers(0, 2, size=(n_images, 1)) * sims.size * rng.random((n_images, 1))
    assert len(np.unique(sims)) == sims.size
    ours = metrics.evaluate_sims(sims, cpi)[0]
    for k in (1, 5, 10):
        assert ours[f"i2t_r{k}"] == pytest.approx(hit_rate(sims, truth, k), abs=1e-4)  # float32 means; one query is 2.5 points
        assert ours[f"t2i_r{k}"] == pytest.approx(hit_rate(sims.T, truth.T, k), abs=1e-4)  # float32 means; one query is 2.5 points
    # The matrices are not trivial: some queries hit at K = 1 and some miss at K = 10.
    assert 0 < ours["i2t_r1"] and ours["t2i_r10"] < 100
