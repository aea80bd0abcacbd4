"""The paper's training recipe pinned: docs/training.md's table, train.py's defaults and what
train_region_f30k.sh and train_region_coco.sh run, each against the paper's values written here.

A wrong default (e.g. --margin 0.1) would change every reproduction run without failing any
other test, since the scripts pass only some options.
"""
import os
import re
import stat
import subprocess

import pytest

from lib.cli.options import get_argument_parser
from lib.model.config import ModelConfig
from lib.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASETS = ("f30k", "coco")
# The paper's values (X-Dim, ACM MM 2023, and the official release it describes): (Flickr30K, COCO)
# where the two differ.
PAPER = {
    "data_name": ("f30k_precomp", "coco_precomp"), "num_epochs": (25, 20), "lr_update": (15, 10),
    "learning_rate": 5e-4, "optim": "adam", "batch_size": 128, "embed_size": 1024, "img_dim": 2048,
    "precomp_enc_type": "basic", "sim": "xdim", "margin": 0.2, "vse_mean_warmup_epochs": 1,
    "max_violation": False, "grad_clip": 2.0, "no_imgnorm": False, "no_txtnorm": False,
    "mask_padded_regions": False,
}
# train.py with no options differs from the Flickr30K recipe only here (the official parser's default).
TRAIN_PY_DEFAULT_ELSEWHERE = {"num_epochs": 30}


def paper(dataset):
    """The recipe of 'f30k' or 'coco' as {option name: value}."""
    column = DATASETS.index(dataset)
    return {name: value[column] if isinstance(value, tuple) else value for name, value in PAPER.items()}


def cell_value(text):
    """A table cell as a value: off/on as booleans, numbers as numbers, anything else as text."""
    if text in ("off", "on"):
        return text == "on"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def documented_recipe():
    """docs/training.md's recipe table -> {'f30k': {name: value}, 'coco': {...}}."""
    with open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8") as f:
        rows = re.findall(r"^\| `--(\w+)` \|[^|]*\| ([^|]+) \| ([^|]+) \|$", f.read(), flags=re.M)
    return {dataset: {name: cell_value(cells[column].strip()) for name, *cells in rows}
            for column, dataset in enumerate(DATASETS)}


def test_the_documented_table_is_the_papers_recipe():
    documented = documented_recipe()
    for dataset in DATASETS:
        assert documented[dataset] == paper(dataset)


def test_train_py_with_no_options_parses_to_the_recipe():
    # catches: a wrong default of --margin, --grad_clip, --learning_rate, --lr_update,
    # --vse_mean_warmup_epochs (or any other recipe option) in the parser.
    parsed = vars(get_argument_parser().parse_args([]))
    expected = {**paper("f30k"), **TRAIN_PY_DEFAULT_ELSEWHERE}
    assert {name: parsed[name] for name in expected} == expected


def test_config_defaults_are_the_recipe():
    # catches: a recipe value changed in TrainConfig or ModelConfig (what code building configs
    # without a command line, e.g. notebooks, gets).
    defaults = {**vars(TrainConfig()), **vars(ModelConfig())}
    expected = {**paper("f30k"), **TRAIN_PY_DEFAULT_ELSEWHERE}
    assert {name: defaults[name] for name in expected} == expected


def fake_launcher(folder, name):
    """An executable `name` in `folder` that writes its arguments, one a line, to $ARGV_FILE."""
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write('#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done > "$ARGV_FILE"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def script_argv(tmp_path, dataset, nproc):
    """The train.py arguments that train_region_{dataset}.sh passes (NPROC=nproc), read through a fake
    python and torchrun placed first on PATH."""
    fake_launcher(tmp_path, "python")
    fake_launcher(tmp_path, "torchrun")
    argv_file = tmp_path / "argv.txt"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "ARGV_FILE": str(argv_file),
           "NPROC": str(nproc)}
    env.pop("WORKERS", None)
    subprocess.run(["sh", os.path.join(ROOT, f"train_region_{dataset}.sh"), "DATA", "OUT"], env=env, check=True)
    argv = argv_file.read_text().splitlines()
    script = next(i for i, arg in enumerate(argv) if arg.endswith("train.py"))
    assert argv[:script] == ([] if nproc == 1 else ["--standalone", "--nproc_per_node", str(nproc)])
    assert os.path.samefile(argv[script], os.path.join(ROOT, "train.py"))
    return argv[script + 1:]


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("dataset", DATASETS)
def test_each_script_runs_the_recipe(tmp_path, dataset, nproc):
    # catches: a script that passes another --lr_update or --num_epochs, or leaves a recipe value
    # to a default that differs from the paper.
    parsed = vars(get_argument_parser().parse_args(script_argv(tmp_path, dataset, nproc)))
    expected = paper(dataset)
    assert {name: parsed[name] for name in expected} == expected
    assert (parsed["data_path"], parsed["model_name"], parsed["logger_name"]) == ("DATA", "OUT/checkpoint", "OUT/log")
    assert parsed["workers"] == 4
