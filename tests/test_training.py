"""Training loop, checkpoints/resume, logging, multi-process equivalence (CPU, tiny)."""
import os
import struct
import subprocess
import sys

import pytest

from lib.tb_logger import TBLogger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_scalars(logdir):
    """Parse the TFRecord events file by hand -> {tag: [(step, value)]}."""
    from tensorboard_logger.tf_protobuf import event_pb2
    (name,) = [f for f in os.listdir(logdir) if f.startswith("events.out.tfevents")]
    data = open(os.path.join(logdir, name), "rb").read()
    scalars, pos = {}, 0
    while pos < len(data):
        (length,) = struct.unpack("Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tb_logger_writes_scalars(tmp_path):
    logger = TBLogger(str(tmp_path))
    assert logger.active
    logger.log_value("loss", 1.5, 3)
    logger.log_values({"r1": 20.0, "rsum": 100.25}, 7)
    assert read_scalars(tmp_path) == {"loss": [(3, 1.5)], "r1": [(7, 20.0)], "rsum": [(7, 100.25)]}


def test_tb_logger_disabled_is_noop(tmp_path):
    logger = TBLogger(str(tmp_path / "x"), enabled=False)
    logger.log_value("loss", 1.0, 1)
    assert not logger.active and not (tmp_path / "x").exists()


def test_tb_logger_falls_back_when_protobuf_backend_is_foreign(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    code = ("import google.protobuf.descriptor\n"
            "from lib.tb_logger import TBLogger\n"
            f"l = TBLogger({str(tmp_path)!r}); l.log_value('a', 1, 1); print('active', l.active)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "active False" in res.stdout
    assert "TensorBoard logging disabled" in res.stderr
