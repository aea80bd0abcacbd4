"""train.py: bad input fails in one line before any work; resume errors; the paper's recipe in its defaults,
docs/training.md's table and the two region scripts."""
import errno
import os
import re
import stat
import subprocess

import pytest
import torch
from helpers import ROOT, TINY_IMG_DIM, copy_data, poison, run_train, train_argv, train_from_options

import train as train_script
from lib.cli.train import get_argument_parser
from lib.errors import XDimError
from lib.model.config import ModelConfig
from lib.runtime import distributed
from lib.training import trainer as training
from lib.training.config import TrainConfig


def test_training_output_under_a_file_fails_before_any_work(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = train_argv(tmp_path, *tiny_precomp, tiny_bert_dir)
    argv[argv.index("--model_name") + 1] = str(blocker / "ckpt")
    code, err = run_train(argv, capsys)
    assert code == 2 and err == f"error: --model_name {blocker / 'ckpt'}: {blocker} is a file, not a folder"
    assert sorted(os.listdir(tmp_path)) == ["file"]  # not even the log folder


def test_nan_training_features_name_the_file_and_image(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "train", 7)
    code, err = run_train(train_argv(tmp_path, data_path, data_name, tiny_bert_dir), capsys)
    assert code == 2
    assert err == (f"error: {folder / 'train_ims.npy'}: image 7 holds NaN or infinite region features; "
                   f"python check_data.py --data_path {data_path} --data_name {data_name} checks every split")


def test_nan_dev_features_stop_training_before_the_first_step(tmp_path, tiny_precomp, tiny_bert_dir):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "dev", 3, float("-inf"))
    opt = get_argument_parser().parse_args(train_argv(tmp_path, data_path, data_name, tiny_bert_dir))
    with pytest.raises(XDimError, match=r"dev_ims\.npy: image 3 holds NaN or infinite"):
        train_from_options(opt)
    assert not (tmp_path / "log" / "events.out.tfevents").exists()
    assert not os.path.exists(tmp_path / "ckpt")


@pytest.mark.parametrize("option, value, message", [
    ("--learning_rate", "nan", "--learning_rate nan: must be a positive number"),
    ("--learning_rate", "-0.001", "--learning_rate -0.001: must be a positive number"),
    ("--num_epochs", "-1", "--num_epochs -1: must be at least 1"),
    ("--embed_size", "0", "--embed_size 0: must be in 2..16384 (the paper uses 1024)"),
    ("--batch_size", "0", "--batch_size 0: must be at least 1"),
    ("--margin", "-0.2", "--margin -0.2: must be a number >= 0"),
    ("--workers", "-2", "--workers -2: must be 0 (load in the main process) or more"),
    ("--threads", "-1", "--threads -1: must be 0 (automatic) or more"),
    ("--grad_clip", "inf", "--grad_clip inf: must be a finite number (<= 0 disables clipping)"),
])
def test_bad_training_numbers_fail_in_one_line_before_any_work(tmp_path, tiny_precomp, tiny_bert_dir, capsys,
                                                               option, value, message):
    code, err = run_train(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, option, value), capsys)
    assert code == 2 and err == f"error: {message}"
    assert os.listdir(tmp_path) == []


def test_indivisible_global_batch_fails_before_anything_is_logged(tmp_path, tiny_precomp, tiny_bert_dir,
                                                                  monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    opt = get_argument_parser().parse_args(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir,
                                                      "--batch_size", "31"))
    with pytest.raises(XDimError, match=r"--batch_size 31 is the global batch .* processes \(2\)"):
        train_from_options(opt)
    assert os.listdir(tmp_path) == []


def test_resuming_a_finished_run_says_so(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    finished = tmp_path / "finished.pth"
    torch.save({"format": "xdim", "model": {}, "epoch": 4}, finished)
    code, err = run_train(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, "--resume", str(finished)), capsys)
    assert code == 2
    assert err == f"error: --num_epochs 1: {finished} already finished epoch 4; ask for more epochs to continue it"


def test_train_script_turns_any_os_error_into_one_line(monkeypatch, capsys):
    def fails(model_config, train_config, runtime):
        raise OSError(errno.EACCES, "Permission denied", "runs/x/events.out")

    monkeypatch.setattr(training, "train", fails)
    assert train_script.main([]) == 2
    assert capsys.readouterr().err == "error: runs/x/events.out: permission denied\n"


def run_main(argv, capsys):
    """-> (exit code, last line of stderr): library progress bars may precede the error."""
    code = train_script.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def cli(tmp_path, data, bert_dir, embed_size=32):
    return ["--data_path", data[0], "--data_name", data[1], "--img_dim", str(TINY_IMG_DIM),
            "--bert_path", bert_dir, "--embed_size", str(embed_size), "--batch_size", "32",
            "--workers", "0", "--device", "cpu", "--num_epochs", "2",
            "--logger_name", str(tmp_path / "log"), "--model_name", str(tmp_path / "ckpt")]


def test_resume_errors(tmp_path, one_epoch, tiny_precomp, tiny_bert_dir, capsys):
    first, _ = one_epoch
    args = cli(tmp_path, tiny_precomp, tiny_bert_dir)
    missing = str(tmp_path / "nope.pth")
    code, err = run_main(args + ["--resume", missing], capsys)
    assert code == 2 and err.startswith("error: ") and missing in err

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00\x01 definitely not a checkpoint" * 10)
    code, err = run_main(args + ["--resume", str(corrupt)], capsys)
    assert code == 2 and err.startswith("error: ") and str(corrupt) in err

    other = os.path.join(first.model_name, "checkpoint.pth")  # trained with embed_size 32
    code, err = run_main(cli(tmp_path, tiny_precomp, tiny_bert_dir, embed_size=48) + ["--resume", other],
                         capsys)
    assert code == 2 and err.startswith("error: ") and other in err and "shape" in err
    assert not (tmp_path / "ckpt" / "checkpoint.pth").exists()


# ---------------------------------------------------------------- the paper's recipe
# docs/training.md's table, train.py's defaults, the config defaults and what train_region_f30k.sh and
# train_region_coco.sh run, each against the paper's values written here. A wrong default (e.g.
# --margin 0.1) would change every reproduction run without failing any other test, since the
# scripts pass only some options.

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
