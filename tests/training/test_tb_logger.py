"""lib/training/tb_logger.py: TensorBoard scalars and the fallbacks."""
import os
import sys

import pytest
from helpers import ROOT, read_scalars, run_command

from lib.training import tb_logger
from lib.training.tb_logger import TBLogger


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


def test_tb_logger_without_tensorboard_logger_is_noop(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard_logger", None)  # import raises ImportError
    with pytest.warns(UserWarning, match="tensorboard_logger is not installed"):
        logger = TBLogger(str(tmp_path / "x"))
    logger.log_value("loss", 1.0, 1)
    assert not logger.active and not (tmp_path / "x").exists()


def test_tb_logger_works_whatever_was_imported_first_and_leaves_protobuf_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    code = ("import os\n"
            "import google.protobuf.descriptor\n"
            "from google.protobuf.internal import api_implementation\n"
            "before = api_implementation.Type()\n"
            "from lib.training.tb_logger import TBLogger\n"
            f"l = TBLogger({str(tmp_path)!r}); l.log_value('a', 1, 1); l.log_value('a', 2.5, 2); l.close()\n"
            "print('active', l.active is False, 'backend', before == api_implementation.Type(),\n"
            "      os.environ.get('PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION'))\n")
    res = run_command([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60)
    assert res.out.split() == ["active", "True", "backend", "True", "None"]
    assert "TensorBoard logging disabled" not in res.err
    assert read_scalars(tmp_path) == {"a": [(1, 1.0), (2, 2.5)]}


def test_tb_logger_names_a_writer_that_cannot_load(tmp_path, monkeypatch):
    monkeypatch.setattr(tb_logger, "WRITER", "print('error TypeError: Descriptors cannot be created directly.')")
    with pytest.warns(UserWarning, match=r"could not be imported \(TypeError: Descriptors cannot be created"):
        logger = TBLogger(str(tmp_path / "x"))
    logger.log_value("loss", 1.0, 1)
    assert not logger.active
