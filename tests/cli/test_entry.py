"""The one error wrapper under torchrun: each failure printed once, naming its process, exit 2;
a copy of another process's failure silent; Ctrl-C one line with exit 130."""
import datetime
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from lib.cli.entry import entry_point
from lib.errors import XDimError
from lib.runtime import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _failing(error):
    @entry_point
    def main(argv=None):
        raise error
    return main


@pytest.fixture
def rank_1_of_2(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)


def test_a_failure_names_its_process_under_torchrun(rank_1_of_2, capsys):
    assert _failing(XDimError("data.npy: broken"))() == 2
    assert capsys.readouterr().err == "error: process 1: data.npy: broken\n"


def test_a_copy_of_another_processs_failure_is_not_printed_again(rank_1_of_2, capsys):
    assert _failing(distributed.OtherProcessFailed("data.npy: broken (in process 0)"))() == 2
    assert capsys.readouterr().err == ""


def test_outside_torchrun_the_line_is_plain(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    assert _failing(XDimError("data.npy: broken"))() == 2
    assert capsys.readouterr().err == "error: data.npy: broken\n"


def test_ctrl_c_is_one_line_and_status_130(capsys):
    assert _failing(KeyboardInterrupt())() == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_the_same_failure_in_every_process_is_printed_once(rank_1_of_2, monkeypatch, capsys):
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=datetime.timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", f"test-{os.getpid()}")
    same = _failing(XDimError("model.pth: no such checkpoint file"))
    assert same() == 2 and same() == 2  # two processes meeting the same failure
    assert _failing(XDimError("other.pth: no such checkpoint file"))() == 2
    assert capsys.readouterr().err == ("error: process 1: model.pth: no such checkpoint file\n"
                                       "error: process 1: other.pth: no such checkpoint file\n")


def test_torchrun_of_two_processes_prints_the_error_once(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(ROOT, "eval.py"), "--model_path", str(tmp_path / "missing.pth"),
                             "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] in {f"error: process {k}: {tmp_path / 'missing.pth'}: no such checkpoint file" for k in (0, 1)}
    assert "exitcode  : 2" in result.stderr  # torchrun's report: our processes exit with status 2
