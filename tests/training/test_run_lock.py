"""lib/training/run_lock.py: the training lock."""
import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from helpers import join_group, make_opt, run_training, spawn

import train as train_script
from lib.errors import XDimError
from lib.training import run_lock

LOGGER = logging.getLogger("test_lock")


def dead_pid():
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_json(path):
    return json.loads(read_text(path))


def write_lock(folder, pid, host=None, started="2026-01-02T03:04:05Z"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, run_lock.LOCK_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "started": started}, f)
    return path


def test_second_holder_is_refused_and_the_lock_goes_with_the_first(tmp_path):
    folder = str(tmp_path / "run")
    with run_lock.training_lock([folder], LOGGER) as held:
        assert held == [os.path.join(folder, "train.lock")]
        owner = read_json(held[0])
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(XDimError) as refused, run_lock.training_lock([folder], LOGGER):
            pass
        assert str(refused.value) == (
            f"{folder}: in use by another training (pid {os.getpid()}, started {owner['started']}, "
            f"lock file {held[0]}); stop it or wait for it to finish, or use another --model_name / --logger_name")
        assert os.path.exists(held[0])  # the refused run left the holder's lock alone
    assert not os.path.exists(held[0])


def test_lock_is_released_when_the_block_raises(tmp_path):
    folder = str(tmp_path / "run")
    with pytest.raises(RuntimeError), run_lock.training_lock([folder], LOGGER):
        raise RuntimeError("a crash mid-training")
    assert not os.path.exists(folder)  # created for the lock, left empty: removed with it
    os.makedirs(folder)
    with run_lock.training_lock([folder], LOGGER):
        pass
    assert os.listdir(folder) == []  # a folder that was there before stays


def test_both_folders_are_locked_once_each(tmp_path):
    ckpt, log = str(tmp_path / "ckpt"), str(tmp_path / "log")
    with run_lock.training_lock([ckpt, log, str(tmp_path / "ckpt" / ".")], LOGGER) as held:
        assert held == [os.path.join(ckpt, "train.lock"), os.path.join(log, "train.lock")]
    # A run whose --logger_name is busy is refused too, and takes no lock in --model_name.
    busy = write_lock(log, os.getpid())
    with pytest.raises(XDimError, match=f"^{log}: in use by another training"), \
            run_lock.training_lock([ckpt, log], LOGGER):
        pass
    assert not os.path.exists(ckpt) and os.path.exists(busy)


def test_lock_of_another_host_is_refused_with_what_to_do(tmp_path):
    folder = str(tmp_path / "run")
    path = write_lock(folder, dead_pid(), host="elsewhere.example")
    with pytest.raises(XDimError) as refused, run_lock.training_lock([folder], LOGGER):
        pass
    assert str(refused.value) == (
        f"{folder}: in use by another training (pid {read_json(path)['pid']} on host elsewhere.example, "
        f"started 2026-01-02T03:04:05Z, lock file {path}); if that run is gone, delete {path}; "
        "else use another --model_name / --logger_name")


def test_lock_of_a_dead_process_is_taken_over_and_logged(tmp_path, caplog):
    folder = str(tmp_path / "run")
    pid = dead_pid()
    path = write_lock(folder, pid)
    with caplog.at_level(logging.WARNING, logger="test_lock"), run_lock.training_lock([folder], LOGGER):
        assert read_json(path)["pid"] == os.getpid()
    assert caplog.messages == [(f"took over {path}: its run (pid {pid}, started 2026-01-02T03:04:05Z) "
                               "is no longer running")]
    assert not os.path.exists(path)


def test_half_written_lock_is_refused_not_removed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "train.lock").write_text("")
    with pytest.raises(XDimError) as refused, run_lock.training_lock([str(folder)], LOGGER):
        pass
    lock = folder / "train.lock"
    assert str(refused.value) == (f"{folder}: another training is starting in this folder (lock file {lock}, "
                                  f"not yet written); wait for it, or delete {lock} if no training runs, or use "
                                  "another --model_name / --logger_name")
    assert (folder / "train.lock").exists()


def test_train_cli_refuses_a_busy_model_name_in_one_line(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    opt = make_opt(tmp_path, tiny_precomp, tiny_bert_dir)
    path = write_lock(opt.model_name, os.getpid(), started="2026-05-06T07:08:09Z")
    argv = ["--data_path", opt.data_path, "--data_name", opt.data_name, "--img_dim", str(opt.img_dim),
            "--bert_path", tiny_bert_dir, "--device", "cpu", "--workers", "0", "--num_epochs", "1",
            "--embed_size", "32", "--batch_size", "32", "--model_name", opt.model_name,
            "--logger_name", opt.logger_name]
    assert train_script.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"error: {opt.model_name}: in use by another training (pid {os.getpid()}, started "
                   f"2026-05-06T07:08:09Z, lock file {path}); stop it or wait for it to finish, or use "
                   "another --model_name / --logger_name")]
    # Nothing written into the holder's folders: no log lines, no checkpoint.
    assert os.listdir(opt.model_name) == ["train.lock"]
    assert not os.path.exists(os.path.join(opt.logger_name, "train.log"))


def test_train_takes_over_a_dead_lock_logs_it_and_releases_on_error(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    # A --resume that does not exist stops the run after the lock was taken.
    opt = make_opt(tmp_path, tiny_precomp, tiny_bert_dir, resume=str(tmp_path / "nope.pth"))
    pid = dead_pid()
    path = write_lock(opt.model_name, pid)
    with pytest.raises(XDimError, match="no such checkpoint file"):
        run_training(opt)
    assert not os.path.exists(path) and not os.path.exists(os.path.join(opt.logger_name, "train.lock"))
    said = capsys.readouterr().out  # on the console; a start that failed leaves no train.log
    assert f"took over {path}: its run (pid {pid}, started 2026-01-02T03:04:05Z) is no longer running" in said
    assert not os.path.exists(os.path.join(opt.logger_name, "train.log"))


def refused_worker(rank, world, options, out_dir):
    import argparse

    from lib.runtime import distributed
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    try:
        run_training(argparse.Namespace(**options))
        message = "trained"
    except XDimError as error:
        message = str(error)
    finally:
        distributed.cleanup()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w", encoding="utf-8") as f:
        f.write(message)


def test_refusal_reaches_every_rank_under_torchrun(tmp_path, tiny_precomp, tiny_bert_dir):
    opt = make_opt(tmp_path, tiny_precomp, tiny_bert_dir)
    path = write_lock(opt.model_name, os.getpid())  # this test process: alive
    spawn(refused_worker, (2, vars(opt), str(tmp_path)), timeout=240)
    messages = [(tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8") for rank in range(2)]
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{opt.model_name}: in use by another training (pid {os.getpid()}, ")
    assert os.path.exists(path)
