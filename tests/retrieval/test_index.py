"""Two-stage evaluation (lib.retrieval.index): the fold pair fraction and the floor below every score,
against values worked out by hand."""
import numpy as np
import pytest

from lib.retrieval.index import two_stage_metrics, two_stage_protocol

# Global vectors of one fold of 2 images and 2 captions (one caption per image), K = 1.
# Matched: each caption's best image is its own and each image's best caption is its own,
# so both directions need the pairs (0, 0) and (1, 1): 2 of 4 pairs.
MATCHED = (np.eye(2), np.eye(2))
# Leaning: both captions prefer image 0 (1 > 0 and 0.9 > 0.1), image 0 prefers caption 0 and
# image 1 caption 1: the pairs (0, 0), (0, 1), (1, 1), 3 of 4.
LEANING = (np.eye(2), np.array([[1.0, 0.0], [0.9, 0.1]]))


def test_fold_pair_fraction_is_the_mean_over_folds_that_differ():
    # catches: fold_pair_fraction = the last (or first) fold's fraction instead of their mean.
    folds = [LEANING, MATCHED, LEANING, MATCHED, MATCHED]
    img_global = np.concatenate([f[0] for f in folds]).astype(np.float32)
    cap_global = np.concatenate([f[1] for f in folds]).astype(np.float32)
    sims = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    results = two_stage_protocol(sims, img_global, cap_global, 1, captions_per_image=1, fold5=True, fold_images=2)
    assert results["fold_pair_fraction"] == pytest.approx((0.75 + 0.5 + 0.75 + 0.5 + 0.5) / 5)


def test_a_shortlisted_pair_at_the_matrix_minimum_still_ranks_above_the_rest():
    # catches: the floor of the pairs outside the shortlists equal to sims.min() instead of below it
    # (the true pair (0, 0) would tie with both unlisted pairs of its row and column and rank last).
    sims = np.array([[0, 5, 6], [4, 3, 1], [2, 1, 7]], dtype=np.float32)
    identity = np.eye(3, dtype=np.float32)  # every query shortlists exactly its own match
    values, fraction = two_stage_metrics(sims, identity, identity, 1, captions_per_image=1)
    for direction in ("i2t", "t2i"):
        assert values[f"{direction}_r1"] == 100.0 and values[f"{direction}_meanr"] == 1.0
    assert fraction == pytest.approx(3 / 9)
