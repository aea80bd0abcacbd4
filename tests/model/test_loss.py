"""lib/model/loss.py: the hinge loss against hand-computed sums."""
import pytest
import torch

from lib.model.loss import ContrastiveLoss

SCORES = torch.tensor([[0.9, 0.5, 0.8],
                       [0.5, 0.6, 0.7],
                       [0.1, 0.4, 0.3]])


def test_loss_sums_every_violation():
    # Image rows (vs own diagonal): row 0: 0.1; row 1: 0.1 + 0.3; row 2: 0.3 (0.2+0.1-0.3 = 0).
    # Caption columns: col 1: 0.1 (from image 0); col 2: 0.7 + 0.6; col 0: none.
    assert ContrastiveLoss(0.2)(SCORES).item() == pytest.approx(0.8 + 1.4, abs=1e-6)


def test_loss_hardest_negatives():
    # Hardest per image row: 0.1, 0.3, 0.3; per caption column: 0, 0.1, 0.7.
    assert ContrastiveLoss(0.2, max_violation=True)(SCORES).item() == pytest.approx(0.7 + 0.8, abs=1e-6)
