"""train_grid_f30k.sh and train_grid_coco.sh hand train.py VSE-infinity's grid recipe."""
import os
import subprocess

import pytest

from lib.cli.train import get_argument_parser, train_configs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launched_options(tmp_path, script, *args, env=None):
    """Run `script` with a stand-in `python` that records its arguments -> (result, parsed train.py options)."""
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/bin/sh\nshift\nprintf "%s\\n" "$@" > "$RECORD"\n')
    stub.chmod(0o755)
    record = tmp_path / "argv.txt"
    environment = dict(os.environ, PATH=f"{stub.parent}:{os.environ['PATH']}", RECORD=str(record), **(env or {}))
    environment.pop("DATA_PATH", None)
    environment.pop("BACKBONE_PATH", None)
    result = subprocess.run(["sh", os.path.join(ROOT, script), *args], env=environment, capture_output=True,
                            text=True)
    if result.returncode:
        return result, None
    return result, get_argument_parser().parse_args(record.read_text().splitlines())


@pytest.mark.parametrize("script, data_name", [("train_grid_f30k.sh", "f30k"), ("train_grid_coco.sh", "coco")])
def test_grid_scripts_pass_the_recipe(tmp_path, script, data_name):
    _, opt = launched_options(tmp_path, script, "DATA", "weights.pth", "OUT", "--num_epochs", "3")
    model, train, _ = train_configs(opt)
    assert (opt.data_path, opt.data_name, opt.model_name) == ("DATA", data_name, "OUT/checkpoint")
    assert model.uses_backbone and model.backbone_source == "detector" and model.backbone_path == "weights.pth"
    assert model.input_size == 512 and model.img_dim == 2048
    assert (train.embedding_warmup_epochs, train.backbone_warmup_epochs, train.backbone_lr_factor) == (1, 0, 0.01)
    assert (train.lr_update, train.batch_size, train.num_epochs) == (15, 128, 3)  # the extra option wins


def test_grid_script_names_a_missing_weight_file(tmp_path):
    result, _ = launched_options(tmp_path, "train_grid_f30k.sh", "DATA")
    assert result.returncode != 0 and "BACKBONE_PATH" in result.stderr
    _, opt = launched_options(tmp_path, "train_grid_f30k.sh", "DATA", "w.pth",
                              env={"BACKBONE_SOURCE": "wsl"})
    assert opt.backbone_source == "wsl"
