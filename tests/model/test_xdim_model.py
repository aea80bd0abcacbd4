"""lib/model/xdim_model.py: shapes, a train step by hand, padded regions masked,
one module that moves, saves and compiles."""
import pytest
import torch
from helpers import TINY_IMG_DIM, hinge_losses_by_hand, model_from_options, tiny_batch, tiny_opt, trainer_for

from lib.model.config import ModelConfig
from lib.model.xdim_model import XDimModel


def test_forward_shapes_and_train_step(tiny_bert_dir):
    opt = tiny_opt(tiny_bert_dir, embed_size=12)
    model = model_from_options(opt)
    trainer = trainer_for(model, opt)
    images, captions, lengths = tiny_batch()
    img_emb, cap_emb, cap_lens = model.forward_emb(images, captions, lengths)
    assert img_emb.shape == (4, 6, 12) and cap_emb.shape == (4, 7, 12)
    assert torch.allclose(img_emb.norm(dim=-1), torch.ones(4, 6), atol=1e-5)
    assert model.forward_sim(img_emb, cap_emb, cap_lens).shape == (4, 4)
    model.train()
    scores = []
    criterion = trainer.criterion
    trainer.criterion = lambda s: scores.append(s.detach().double().numpy()) or criterion(s)
    before = {name: p.detach().double().clone() for name, p in model.named_parameters() if p.requires_grad}
    first = trainer.train_step(images, captions, lengths)
    # The loss: every violation of margin 0.2, summed (epoch 0 is a warm-up epoch).
    assert first == pytest.approx(hinge_losses_by_hand(scores[0], 0.2)[0], rel=1e-5)
    # AdamW's first step moves each weight by lr * g / (|g| + eps) after the decay p * (1 - lr * 1e-4),
    # with the gradient already clipped to norm 2 and lr 0.002 (BERT: 0.0002).
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        lr = 0.0002 if name.startswith("txt_enc.bert.") else 0.002
        grad = param.grad.double()
        expected = before[name] * (1 - lr * 1e-4) - lr * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(param.detach().double(), expected, rtol=1e-5, atol=1e-6, msg=name)
    grad_norm = torch.cat([p.grad.double().reshape(-1) for p in model.parameters() if p.grad is not None]).norm()
    assert grad_norm <= 2.0 + 1e-6
    losses = [first] + [trainer.train_step(images, captions, lengths) for _ in range(4)]
    assert trainer.iterations == 5 and losses[-1] < losses[0]


def test_model_is_one_module_that_moves_saves_and_compiles(tiny_bert_dir):
    model = model_from_options(tiny_opt(tiny_bert_dir))
    assert isinstance(model, torch.nn.Module) and model.device.type == "cpu"
    assert {key.split(".")[0] for key in model.state_dict()} == {"img_enc", "txt_enc", "sim"}
    moved = model.to(torch.float64)
    assert next(moved.parameters()).dtype == torch.float64
    model = model.to(torch.float32).eval()
    images, captions, lengths = tiny_batch()
    with torch.no_grad():
        eager = model(images, captions, lengths)
        compiled = torch.compile(model, backend="eager")(images, captions, lengths)
    assert eager.shape == (4, 4) and torch.allclose(compiled, eager, atol=1e-6)


def test_training_forward_with_region_lengths_scores_each_image_as_if_unpadded(tiny_bert_dir):
    # catches: XDimModel.forward dropping region_lengths (the flag would change nothing in training).
    torch.manual_seed(0)
    model = XDimModel(ModelConfig(img_dim=TINY_IMG_DIM, embed_size=16, bert=tiny_bert_dir)).eval()
    region_lengths = [6, 3, 1]
    images = torch.randn(3, 6, TINY_IMG_DIM)
    for image, length in enumerate(region_lengths):
        images[image, length:] = 0.0  # how a training batch pads the images whose regions were dropped
    vocab = model.bert_config["vocab_size"]
    captions, lengths = torch.randint(5, vocab, (2, 5)), torch.tensor([5, 3])
    captions[1, 3:] = 0
    with torch.no_grad():
        masked = model(images, captions, lengths, torch.tensor(region_lengths))
        unpadded = torch.cat([model(images[i:i + 1, :length], captions, lengths)
                              for i, length in enumerate(region_lengths)])
        padded = model(images, captions, lengths)
    torch.testing.assert_close(masked, unpadded, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(padded[1:], unpadded[1:], atol=1e-4)  # the padding does matter without the mask
