"""train.py's options of the raw-image mode: refused before any work, one line each."""
import pytest
import torch
from helpers import run_main, write_image_layout

import train as train_script
from lib.cli.train import default_options, train_configs


def train_argv(tmp_path, *extra):
    return ["--data_path", str(tmp_path), "--data_name", "f30k", "--precomp_enc_type", "backbone",
            "--logger_name", str(tmp_path / "log"), "--model_name", str(tmp_path / "ckpt"), "--device", "cpu",
            *extra]


@pytest.mark.parametrize("extra, message", [
    ((), "--backbone_path: the backbone mode needs the weight file of --backbone_source detector: "
         "VSE-infinity's original_updown_backbone.pth"),
    (("--backbone_path", "missing.pth"), "--backbone_path missing.pth: no such file; --backbone_source detector"),
    (("--backbone_path", "none", "--backbone_source", "wsl", "--backbone_width", "4"),
     "--backbone_width 4: ResNeXt needs a multiple of 8"),
    (("--backbone_path", "none", "--img_dim", "1024"), "--img_dim 1024: the backbone's grid features have 2048"),
    (("--backbone_path", "none", "--input_scale_factor", "0.1"), "--input_scale_factor 0.1: images would be 25"),
    (("--backbone_path", "none", "--backbone_lr_factor", "-1"), "--backbone_lr_factor -1.0: must be a number >= 0"),
])
def test_bad_options_are_one_line(tmp_path, extra, message):
    run = run_main(train_script.main, train_argv(tmp_path, *extra), expect=2)
    assert run.err.startswith("error: " + message) and run.err.count("\n") == 1
    assert not (tmp_path / "ckpt").exists()


def test_a_weight_file_of_another_network_stops_training_in_one_line(tmp_path, tiny_bert_dir):
    data_path, _ = write_image_layout(str(tmp_path), sizes={"train": 1, "dev": 1})
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet50.pth")
    argv = train_argv(tmp_path, "--backbone_path", str(tmp_path / "resnet50.pth"), "--bert_path", tiny_bert_dir,
                      "--data_path", data_path, "--batch_size", "5", "--workers", "0")  # one batch: the 1 image's 5 captions
    run = run_main(train_script.main, argv, expect=2)
    last = run.err.splitlines()[-1]  # (after BERT's loading bar)
    assert last.startswith("error: --backbone_path ") and "resnet50.pth: holds keys ['conv1.weight'], not the two parts 'base' and 'top'" in last


def test_img_dim_follows_the_backbone_width():
    model, _, _ = train_configs(default_options(precomp_enc_type="backbone", backbone_width=8))
    assert model.img_dim == 256
    region, _, _ = train_configs(default_options())
    assert region.img_dim == 2048 and "backbone_source" not in region.as_dict()
