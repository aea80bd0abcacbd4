"""train.py's checks before work (zero steps, embed size), what a refused or failed start leaves
(no train.log), Ctrl-C's one line, and the messages of a NaN loss and a full disk under --logger_name."""
import logging
import os

import pytest
import torch
from helpers import model_from_options, run_main, trainer_for

import train
from lib.cli.train import default_options
from lib.errors import XDimError
from lib.training import tb_logger, trainer
from lib.training.tb_logger import TBLogger


def _argv(tiny_precomp, tiny_bert_dir, tmp_path, *extra):
    data_path, data_name = tiny_precomp
    return ["--data_path", data_path, "--data_name", data_name, "--bert_path", tiny_bert_dir, "--img_dim", "32",
            "--embed_size", "16", "--batch_size", "32", "--num_epochs", "2", "--workers", "0", "--device", "cpu",
            "--log_step", "1000", "--val_step", "0", "--threads", "1",
            "--model_name", str(tmp_path / "ckpt"), "--logger_name", str(tmp_path / "log"), *extra]


def test_batch_larger_than_the_training_set_is_refused_and_leaves_nothing(tiny_precomp, tiny_bert_dir, tmp_path):
    run = run_main(train.main, _argv(tiny_precomp, tiny_bert_dir, tmp_path, "--batch_size", "161"), expect=2)
    # the tiny training split: 32 images x 5 captions
    assert run.err.startswith("error: --batch_size 161: ") and "holds 160 captions, fewer than one batch" in run.err
    assert "training would take no step" in run.err and run.err.count("\n") == 1
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "log").exists()  # no train.log, no checkpoint


@pytest.mark.parametrize("size", ["1", "200000"])
def test_embed_size_out_of_bounds_is_refused_in_one_line(tiny_precomp, tiny_bert_dir, tmp_path, size):
    run = run_main(train.main, _argv(tiny_precomp, tiny_bert_dir, tmp_path, "--embed_size", size), expect=2)
    assert run.err == f"error: --embed_size {size}: must be in 2..16384 (the paper uses 1024)\n"


def test_refused_start_leaves_no_train_log_in_a_busy_runs_folder(tiny_precomp, tiny_bert_dir, tmp_path):
    busy = tmp_path / "log"  # e.g. another run's checkpoint folder, which holds no train.log
    busy.mkdir()
    (busy / "train.lock").write_text(f'{{"pid": {os.getpid()}, "host": "{os.uname().nodename}"}}')
    run = run_main(train.main, _argv(tiny_precomp, tiny_bert_dir, tmp_path), expect=2)
    assert "in use by another training" in run.err
    assert sorted(os.listdir(busy)) == ["train.lock"]


def test_failed_start_after_the_locks_leaves_no_train_log(tiny_precomp, tiny_bert_dir, tmp_path):
    run = run_main(train.main, _argv(tiny_precomp, tiny_bert_dir, tmp_path, "--data_name", "missing"), expect=2)
    assert "data folder not found" in run.err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "log").exists()


def test_ctrl_c_ends_in_one_line_naming_the_checkpoint_to_resume(tiny_precomp, tiny_bert_dir, tmp_path, monkeypatch):
    step = trainer.Trainer.train_step

    def interrupted_in_epoch_1(self, *args):
        if self.iterations == 7:  # 5 steps per epoch: the third step of epoch 1
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(trainer.Trainer, "train_step", interrupted_in_epoch_1)
    run = run_main(train.main, _argv(tiny_precomp, tiny_bert_dir, tmp_path), expect=130)
    last = tmp_path / "ckpt" / "checkpoint.pth"
    assert run.err.endswith(f"\nerror: interrupted at iteration 7; continue with the same command plus --resume "
                            f"{last} (it restarts from the end of the last finished epoch exactly)\n")
    assert "Traceback" not in run.err
    assert last.is_file() and (tmp_path / "log" / "train.log").is_file()
    assert not (tmp_path / "ckpt" / "train.lock").exists()


def test_ctrl_c_before_any_checkpoint_says_there_is_none(tiny_precomp, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.Trainer, "train_step", lambda self, *args: (_ for _ in ()).throw(KeyboardInterrupt))
    run = run_main(train.main, _argv(tiny_precomp, tiny_bert_dir, tmp_path), expect=130)
    assert run.err.endswith("\nerror: interrupted at iteration 0, before the first epoch ended: no checkpoint to "
                            "resume from, start again\n")


def test_nan_loss_does_not_claim_a_checkpoint_that_was_never_written(tiny_bert_dir, tmp_path):
    opt = default_options(embed_size=16, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          model_name=str(tmp_path / "none"))
    model = model_from_options(opt)
    steps = trainer_for(model, opt)
    steps.criterion = lambda scores: scores.sum() * float("nan")
    images, captions = torch.randn(2, 4, 32), torch.randint(1, 20, (2, 5))
    with pytest.raises(XDimError, match=r"loss is nan at iteration 1: training stopped \(no checkpoint was written;"):
        steps.train_step(images, captions, torch.tensor([5, 5]))


def test_full_disk_in_train_log_names_the_file(tmp_path):
    logger = trainer.setup_text_log(str(tmp_path), enabled=True)
    try:
        held = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))
        held.baseFilename = "/dev/full"  # every write: No space left on device
        logger.info("before the start: held in memory")
        with pytest.raises(XDimError, match=r"^/dev/full: cannot write the training log \(No space left on device\)"):
            trainer.open_text_log(logger)
    finally:
        trainer.close_text_log()


def test_full_disk_in_tensorboard_events_names_the_folder(tmp_path, monkeypatch):
    full = ("import sys\nprint('ready', flush=True)\n"
            "for line in sys.stdin:\n    print('oserror No space left on device', flush=True)\n")
    monkeypatch.setattr(tb_logger, "WRITER", full)  # a writer whose every write meets a full disk
    tb = TBLogger(str(tmp_path / "log"))
    with pytest.raises(XDimError, match=rf"^{tmp_path}/log: cannot write the TensorBoard events \(No space left"):
        tb.log_value("loss", 1.0, 1)
