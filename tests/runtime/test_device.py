"""lib/runtime/device.py: devices and the thread policy."""
import os

import pytest
import torch
from helpers import run_eval, run_train, train_argv

from lib.cli.evaluate import evaluation_parser
from lib.cli.train import get_argument_parser
from lib.runtime import device as runtime


@pytest.mark.parametrize("name, devices, message", [
    ("cuda", 0, "--device cuda: no CUDA device is available here"),
    ("cuda:3", 2, "--device cuda:3: this machine has 2 CUDA device(s), numbered 0 to 1"),
    ("gpu", 0, "--device gpu: "),
])
def test_unavailable_device_fails_in_one_line(checkpoint, tmp_path, tiny_precomp, tiny_bert_dir, capsys,
                                              monkeypatch, name, devices, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    code, err = run_train(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, "--device", name), capsys)
    assert code == 2 and err.startswith(f"error: {message}")
    assert os.listdir(tmp_path) == []
    code, _, err = run_eval(["--model_path", checkpoint, "--device", name], capsys)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_thread_policy(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 8)
    assert runtime.apply_threads(0) == 7 == torch.get_num_threads()
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 1)
    assert runtime.apply_threads(0) == 1
    assert runtime.apply_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert runtime.apply_threads(0) == 2  # the environment's choice stands
    assert get_argument_parser().parse_args(["--threads", "4"]).threads == 4
    assert evaluation_parser("eval").parse_args(["--threads", "4"]).threads == 4
