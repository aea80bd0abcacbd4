"""lib/model/xdim_model.py: shapes, a train step, one module that moves, saves and compiles."""
import torch
from helpers import model_from_options, tiny_batch, tiny_opt, trainer_for


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
    before = model.sim.E.detach().clone()
    losses = [trainer.train_step(images, captions, lengths) for _ in range(5)]
    assert trainer.iterations == 5 and not torch.equal(before, model.sim.E.detach())
    assert losses[-1] < losses[0]


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
