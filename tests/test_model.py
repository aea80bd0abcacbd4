"""Loss, optimizer groups, the XDimModel module and checkpoints (ours and the official format)."""
import os
import re

import numpy as np
import pytest
import torch
from builders import checkpoint_of, model_from_options, trainer_for
from legacy_format import save_v1_checkpoint
from official_format import official_opt, official_parts, write_official_checkpoint
from test_xdim import reference_scores

from lib.cli.options import default_options
from lib.errors import XDimError
from lib.formats.checkpoint import load_checkpoint, save_checkpoint, training_state
from lib.model.loss import ContrastiveLoss
from lib.model.xdim_model import XDimModel

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


def tiny_opt(bert_dir, **overrides):
    settings = dict(bert_path=bert_dir, img_dim=32, embed_size=16, device="cpu", learning_rate=0.002)
    settings.update(overrides)
    return default_options(**settings)


def tiny_batch(n=4, regions=6, img_dim=32, vocab=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, regions, img_dim, generator=gen)
    lengths = torch.tensor([7, 5, 6, 4][:n])
    captions = torch.zeros(n, 7, dtype=torch.long)
    for i, length in enumerate(lengths):
        captions[i, 0] = 2
        captions[i, 1:length - 1] = torch.randint(5, vocab, (int(length) - 2,), generator=gen)
        captions[i, length - 1] = 3
    return images, captions, lengths


def test_optimizer_groups_carry_section_5_learning_rates(tiny_bert_dir):
    opt = tiny_opt(tiny_bert_dir, learning_rate=5e-4)
    model = model_from_options(opt)
    trainer = trainer_for(model, opt)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert groups["main"]["lr"] == pytest.approx(5e-4) and groups["bert"]["lr"] == pytest.approx(5e-5)
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in groups.values())
    bert = {id(p) for p in model.txt_enc.bert.parameters() if p.requires_grad}
    main = {id(p) for p in groups["main"]["params"]}
    assert {id(p) for p in groups["bert"]["params"]} == bert
    expected_main = [*model.img_enc.parameters(), *model.txt_enc.proj.parameters(), *model.sim.parameters()]
    assert main == {id(p) for p in expected_main}
    trainer.set_learning_rate_factor(0.1)
    assert groups["main"]["lr"] == pytest.approx(5e-5) and groups["bert"]["lr"] == pytest.approx(5e-6)


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


def test_non_finite_loss_stops_before_the_step(tiny_bert_dir):
    opt = tiny_opt(tiny_bert_dir)
    model = model_from_options(opt)
    images, captions, lengths = tiny_batch()
    weights = model.state_dict()["img_enc.fc.weight"].clone()
    images[0, 0, 0] = float("nan")
    with pytest.raises(XDimError, match="loss is nan at iteration 1"):
        trainer_for(model, opt).train_step(images, captions, lengths)
    assert torch.equal(weights, model.state_dict()["img_enc.fc.weight"])


def scores_of(model, seed=1):
    model.val_start()
    with torch.no_grad():
        return model.forward_sim(*model.forward_emb(*tiny_batch(seed=seed)))


def test_our_checkpoint_round_trip(tiny_bert_dir, tmp_path):
    opt = tiny_opt(tiny_bert_dir)
    model = model_from_options(opt)
    model.train()
    trainer = trainer_for(model, opt)
    trainer.train_step(*tiny_batch())
    path = str(tmp_path / "model_best.pth")
    save_checkpoint(trainer.checkpoint(next_epoch=3), path)
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["iterations"] == 1 and raw["version"] == 2
    assert raw["model_config"]["embed_size"] == 16 and raw["train_config"]["learning_rate"] == 0.002
    assert raw["optimizer"]["state"]
    loaded = XDimModel.from_checkpoint(path, device="cpu")  # BERT architecture and vocab from the file
    assert torch.equal(scores_of(loaded), scores_of(model))
    assert loaded.vocab() == model.vocab()


class Payload:
    """An object a weights-only load refuses; unpickling it would call print."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_unreadable_files_say_what_they_are_in_one_line(tiny_bert_dir, tmp_path):
    model = model_from_options(tiny_opt(tiny_bert_dir))
    good = str(tmp_path / "good.pth")
    save_checkpoint(checkpoint_of(model), good)
    legacy = str(tmp_path / "legacy.pth")
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "truncated.pth": open(good, "rb").read()[:5000],
        "legacy_truncated.pth": open(legacy, "rb").read()[:200],
        "notes.pth": "model trained on 2 GPUs\nbest rsum 512.3\n".encode("utf-8"),
        "garbage.pth": b"\x00\x01 definitely not a checkpoint",
        "empty.pth": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"model": Payload()}, str(tmp_path / "payload.pth"))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, str(tmp_path / "foreign.pth"))
    expected = {
        "truncated.pth": "is truncated or corrupt (its zip archive lacks the end record); re-download or re-save it",
        "legacy_truncated.pth": "is truncated or corrupt (",
        "notes.pth": "is a text file, not a PyTorch checkpoint",
        "garbage.pth": "is not a PyTorch checkpoint (neither a zip archive nor a pickle)",
        "empty.pth": "is empty, not a checkpoint",
        "payload.pth": "holds Python objects (",
        "foreign.pth": "not an X-Dim checkpoint",
        "absent.pth": "no such checkpoint",
    }
    for name, problem in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(XDimError) as info:
            XDimModel.from_checkpoint(path, device="cpu")
        message = str(info.value)
        assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message
        assert "weights_only" not in message
    assert "re-download or re-save it" in str(pytest.raises(XDimError, load_checkpoint,
                                                            str(tmp_path / "legacy_truncated.pth")).value)


def test_checkpoint_of_another_shape_is_rejected_with_the_key(tiny_bert_dir, tmp_path):
    path = str(tmp_path / "small.pth")
    save_checkpoint(checkpoint_of(model_from_options(tiny_opt(tiny_bert_dir, embed_size=8))), path)
    model = model_from_options(tiny_opt(tiny_bert_dir, embed_size=16))
    with pytest.raises(XDimError, match=r"'img_enc.fc.weight' has shape \(8, 32\).*\(16, 32\)"):
        model.load_state_dict(load_checkpoint(path)["model"], path=path)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"format": "xdim", "model": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"format": "xdim", "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


@pytest.fixture(scope="module")
def official_checkpoint(tiny_bert_dir, tmp_path_factory):
    parts = official_parts(tiny_bert_dir, d=1024, img_dim=2048)
    path = str(tmp_path_factory.mktemp("official") / "model_best.pth")
    return write_official_checkpoint(path, parts, official_opt()), parts


def test_official_checkpoint_scores_as_the_spec_says(official_checkpoint, tiny_bert_dir):
    path, parts = official_checkpoint
    model = XDimModel.from_checkpoint(path, bert_path=tiny_bert_dir, device="cpu")
    assert model.config.embed_size == 1024 and model.config.sim == "xdim"
    assert model.trained_with["data_name"] == official_opt().data_name
    image, text, similarity = parts
    # The image encoder in evaluation mode, written out from the official weights.
    x = torch.randn(2, 5, 2048)
    bn = lambda h: ((h - image["mlp.bns.0.running_mean"]) / torch.sqrt(image["mlp.bns.0.running_var"] + 1e-5)
                    * image["mlp.bns.0.weight"] + image["mlp.bns.0.bias"])
    hidden = torch.relu(bn(x @ image["mlp.layers.0.weight"].T + image["mlp.layers.0.bias"]))
    v = x @ image["fc.weight"].T + image["fc.bias"] + hidden @ image["mlp.layers.1.weight"].T + image["mlp.layers.1.bias"]
    with torch.no_grad():
        assert torch.allclose(model.encode_images(x), v / (v.norm(dim=-1, keepdim=True) + 1e-8), atol=1e-5)
    # The similarity against the float64 transcription, parameters read from the official names.
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(3, 36, 1024, generator=gen), dim=-1)
    cap = torch.nn.functional.normalize(torch.randn(4, 12, 1024, generator=gen), dim=-1)
    lens = torch.tensor([12, 9, 8, 10])
    with torch.no_grad():
        ours = model.forward_sim(img, cap, lens).numpy()

    class Official:
        E = similarity["weights.weight"]
        lam = similarity["sim_map.weight"][0]
        log_t_mask = similarity["temp_learnable.weight"][0, 0]
        log_t_attn = similarity["temp_scale.weight"][0, 0]

    ref = reference_scores(Official, img, cap, lens)
    assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-5
    # The text side: BERT weights and the projection come through unchanged.
    assert torch.equal(model.txt_enc.proj.weight, text["linear.weight"])


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p[0].__setitem__("fc.wieght", p[0].pop("fc.weight")), "unexpected key 'module.fc.wieght'"),
    (lambda p: p[2].pop("temp_scale.weight"), re.escape("lacks 'model[2].module.temp_scale.weight'")),
    (lambda p: p[1].pop("bert.encoder.layer.1.output.dense.bias"), "bert.encoder.layer.1.output.dense.bias"),
    (lambda p: p[2].__setitem__("sim_map.weight", torch.zeros(2, 1024)),
     r"'module.sim_map.weight' has shape \(2, 1024\), expected \(1024,\)"),
])
def test_official_checkpoint_with_a_bad_key_names_it(official_checkpoint, tiny_bert_dir, tmp_path, edit, expected):
    _, parts = official_checkpoint
    parts = [dict(part) for part in parts]
    edit(parts)
    path = write_official_checkpoint(str(tmp_path / "bad.pth"), parts, official_opt())
    with pytest.raises(XDimError, match=expected):
        XDimModel.from_checkpoint(path, bert_path=tiny_bert_dir, device="cpu")


def test_missing_pretrained_bert_says_how_to_get_it(tmp_path):
    with pytest.raises(XDimError, match="cannot load pretrained BERT weights.*--bert_path"):
        model_from_options(tiny_opt(str(tmp_path / "no-such-bert")))


def test_version_1_checkpoint_loads_and_scores_as_the_model_it_holds(tiny_bert_dir, tmp_path):
    opt = tiny_opt(tiny_bert_dir, sim="xdim_nodelta", no_txtnorm=True, data_path="/data", data_name="x_precomp")
    model = model_from_options(opt)
    path = save_v1_checkpoint(model, opt, str(tmp_path / "v1.pth"))
    loaded = XDimModel.from_checkpoint(path, device="cpu")
    assert loaded.config.sim == "xdim_nodelta" and loaded.config.no_txtnorm and not loaded.config.no_imgnorm
    assert (loaded.config.embed_size, loaded.config.img_dim, loaded.config.bert) == (16, 32, tiny_bert_dir)
    assert loaded.trained_with["data_path"] == "/data" and loaded.trained_with["learning_rate"] == 0.002
    assert "device" not in loaded.trained_with and "vocab_path" not in loaded.trained_with
    assert torch.equal(scores_of(loaded), scores_of(model))
    epoch, best_rsum, iterations, _ = training_state(load_checkpoint(path))
    assert (epoch, best_rsum, iterations) == (3, 123.5, 42)


def test_unknown_checkpoint_version_is_refused(tiny_bert_dir, tmp_path):
    state = checkpoint_of(model_from_options(tiny_opt(tiny_bert_dir)))
    state["version"] = 3
    path = str(tmp_path / "future.pth")
    save_checkpoint(state, path)
    with pytest.raises(XDimError, match=re.escape(f"{path}: written by version 3 of this format, this code "
                                                  "reads versions 1 and 2; re-save it")):
        XDimModel.from_checkpoint(path)


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
