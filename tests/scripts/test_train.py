"""train.py: bad input fails in one line before any work; resume errors."""
import errno
import os

import pytest
import torch
from helpers import TINY_IMG_DIM, copy_data, poison, run_train, train_argv, train_from_options

import train as train_script
from lib.cli.options import get_argument_parser
from lib.errors import XDimError
from lib.runtime import distributed
from lib.training import trainer as training


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
