"""lib.training.trainer: which loss each epoch of a run trains with, checked against float64
hand computations of both losses on the score matrices the run produced."""
import numpy as np
import pytest

from lib.cli.options import check_training_options, default_options, train_configs
from lib.model.loss import ContrastiveLoss
from lib.training import trainer
from lib.training.config import TrainConfig

MARGIN = 0.2  # the recipe's (docs/training.md), left at its default in the run below
TINY_IMG_DIM = 32  # the feature size of the tiny_precomp fixture


def hinge_costs(scores):
    """scores (B, B) float64 -> (cost of each wrong caption per image row, of each wrong image per caption
    column), both (B, B) with zero diagonals, written out from the definition."""
    n = len(scores)
    captions, images = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                captions[i, j] = max(0.0, MARGIN + scores[i, j] - scores[i, i])
                images[i, j] = max(0.0, MARGIN + scores[i, j] - scores[j, j])
    return captions, images


def summed_loss(scores):
    captions, images = hinge_costs(scores)
    return captions.sum() + images.sum()


def hardest_loss(scores):
    captions, images = hinge_costs(scores)
    return captions.max(axis=1).sum() + images.max(axis=0).sum()


@pytest.fixture
def loss_calls(monkeypatch):
    """Every loss evaluation of a run: (epoch, scores as float64, the loss it returned)."""
    calls, epoch = [], [None]
    forward, start_epoch = ContrastiveLoss.forward, trainer.Trainer.start_epoch

    def spy_forward(self, scores):
        loss = forward(self, scores)
        calls.append((epoch[0], scores.detach().double().numpy(), loss.item()))
        return loss

    def spy_start_epoch(self, number):
        epoch[0] = number
        return start_epoch(self, number)

    monkeypatch.setattr(ContrastiveLoss, "forward", spy_forward)
    monkeypatch.setattr(trainer.Trainer, "start_epoch", spy_start_epoch)
    return calls


def test_summed_violations_during_the_warm_up_then_hardest_negatives(tmp_path, tiny_precomp, tiny_bert_dir,
                                                                     loss_calls):
    # catches: `epoch > vse_mean_warmup_epochs` for `>=` (hardest negatives one epoch late), a warm-up
    # of one epoch whatever the option says, hardest negatives from the start, another margin.
    data_path, data_name = tiny_precomp
    opt = default_options(data_path=data_path, data_name=data_name, img_dim=TINY_IMG_DIM, bert_path=tiny_bert_dir,
                          embed_size=16, batch_size=32, num_epochs=3, vse_mean_warmup_epochs=2, workers=0,
                          val_step=0, device="cpu", logger_name=str(tmp_path / "log"),
                          model_name=str(tmp_path / "ckpt"))
    check_training_options(opt)
    result = trainer.train(*train_configs(opt))
    assert [epoch for epoch, _, _ in loss_calls] == [0] * 5 + [1] * 5 + [2] * 5  # 160 captions, batch 32
    assert [loss for _, _, loss in loss_calls] == result["losses"]
    for epoch, scores, loss in loss_calls:
        summed, hardest = summed_loss(scores), hardest_loss(scores)
        assert summed > 1.5 * hardest  # the two losses differ on these batches, so the check below can fail
        assert loss == pytest.approx(summed if epoch < 2 else hardest, rel=1e-5)


@pytest.mark.parametrize("warmup, max_violation, hardest_from", [(1, False, 1), (2, False, 2), (0, False, 0),
                                                                 (3, True, 0)])
def test_the_epoch_where_hardest_negatives_start(warmup, max_violation, hardest_from):
    config = TrainConfig(vse_mean_warmup_epochs=warmup, max_violation=max_violation)
    assert [config.uses_max_violation(epoch) for epoch in range(5)] == [epoch >= hardest_from for epoch in range(5)]
