"""lib/formats/official.py: the official release's checkpoints."""
import re

import numpy as np
import pytest
import torch
from helpers import official_opt, official_parts, write_official_checkpoint

from lib.errors import XDimError
from lib.model.similarity.transcription import xdim_scores as reference_scores
from lib.model.xdim_model import XDimModel


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
