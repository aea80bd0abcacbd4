"""lib/model/loss: the hinge loss against hand-computed sums; every registered loss through the same checks."""
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import model_from_options, tiny_batch, tiny_opt, trainer_for

from lib.cli.train import get_argument_parser
from lib.errors import XDimError
from lib.model.loss import LOSSES, ContrastiveLoss, Loss, LossEntry, build_loss
from lib.training.config import TrainConfig

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


def test_the_warm_up_is_the_loss_s_own_schedule():
    config = TrainConfig(margin=0.2, vse_mean_warmup_epochs=2)
    loss = build_loss("vse_hinge", config)
    for epoch, expected in [(0, 0.8 + 1.4), (1, 0.8 + 1.4), (2, 0.7 + 0.8), (5, 0.7 + 0.8)]:
        loss.start_epoch(epoch)
        assert loss(SCORES).item() == pytest.approx(expected, abs=1e-6), epoch
    always = build_loss("vse_hinge", TrainConfig(max_violation=True, vse_mean_warmup_epochs=2))
    always.start_epoch(0)
    assert always(SCORES).item() == pytest.approx(0.7 + 0.8, abs=1e-6)


class SymmetricInfoNCE(Loss):
    """Registered by a test at run time: cross-entropy of each row and column at temperature 0.1."""

    def forward(self, scores):
        logits = scores.float() / 0.1
        target = torch.arange(len(scores), device=scores.device)
        return nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)


ADDED = {"runtime_entry": ("info_nce", LossEntry(SymmetricInfoNCE, "a test's loss: symmetric InfoNCE"))}
ENTRIES = list(LOSSES) + list(ADDED)


@pytest.fixture
def loss_name(request, monkeypatch):
    """The registry name of the parametrized loss, registered first when a test adds it."""
    if request.param not in ADDED:
        return request.param
    name, entry = ADDED[request.param]
    monkeypatch.setitem(LOSSES, name, entry)
    return name


def scores_with_margin(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=gen) * 0.5


@pytest.mark.parametrize("loss_name", ENTRIES, indirect=True)
def test_loss_contract(loss_name):
    loss = build_loss(loss_name, TrainConfig(loss=loss_name))
    assert isinstance(loss, Loss)
    for epoch in range(3):
        loss.start_epoch(epoch)
        scores = scores_with_margin(seed=epoch).requires_grad_()
        value = loss(scores)
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
        # Matching pairs scored higher never cost more; the order of the pairs does not matter.
        better = scores.detach() + 0.3 * torch.eye(len(scores))
        assert loss(better) <= value.detach() + 1e-6
        order = torch.randperm(len(scores), generator=torch.Generator().manual_seed(epoch))
        assert torch.allclose(loss(scores.detach()[order][:, order]), value.detach(), atol=1e-5)
    # bf16 scores (autocast) give a float32 loss.
    assert loss(scores_with_margin().bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("loss_name", ENTRIES, indirect=True)
def test_loss_is_a_loss_choice_and_trains_a_step(loss_name, tiny_bert_dir):
    parser = get_argument_parser()
    assert parser.parse_args(["--loss", loss_name]).loss == loss_name
    entry = LossEntry(*LOSSES[loss_name])
    assert re.search(rf"^  {loss_name} +{re.escape(entry.help)}$", parser.format_help(), re.M)
    opt = tiny_opt(tiny_bert_dir, loss=loss_name)
    model = model_from_options(opt)
    trainer = trainer_for(model, opt)
    assert type(trainer.criterion) is entry.cls
    weights = model.img_enc.fc.weight.detach().clone()
    model.train()
    assert np.isfinite(trainer.train_step(*tiny_batch()))
    assert not torch.equal(model.img_enc.fc.weight, weights)


def test_unknown_loss_is_one_line(capsys):
    with pytest.raises(XDimError) as info:
        build_loss("bogus", TrainConfig())
    assert str(info.value) == f"--loss: unknown loss 'bogus' (known: {', '.join(LOSSES)})"
    with pytest.raises(SystemExit):
        get_argument_parser().parse_args(["--loss", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
