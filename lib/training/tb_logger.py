"""TensorBoard scalars through tensorboard_logger, with a no-op fallback.

tensorboard_logger 0.1.0 ships protobuf modules generated for protobuf 3; with
protobuf >= 4 they only load under protobuf's pure-python backend, which must
be chosen before protobuf is first imported. Importing this module early (train.py
does it first) selects that backend unless the user chose another one.
"""
import os

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import warnings  # noqa: E402

from lib.errors import XDimError  # noqa: E402


def _load_tensorboard_logger():
    """The tensorboard_logger module, or None (with a warning) when it cannot load."""
    try:
        with warnings.catch_warnings():  # its protobuf-3 modules use deprecated descriptor calls
            warnings.simplefilter("ignore", DeprecationWarning)
            import tensorboard_logger
    except ImportError:
        warnings.warn("TensorBoard logging disabled: tensorboard_logger is not installed "
                      "(pip install tensorboard_logger==0.1.0).", stacklevel=3)
        return None
    except Exception as exc:  # protobuf's TypeError when another backend was loaded first
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        warnings.warn("TensorBoard logging disabled: tensorboard_logger could not be "
                      f"imported ({type(exc).__name__}: {first_line}). Import lib.training.tb_logger "
                      "before anything that imports protobuf, or set "
                      "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python.", stacklevel=3)
        return None
    return tensorboard_logger


class TBLogger:
    """`log_value(tag, value, step)` into an events file under `logdir`.

    A no-op when `enabled` is False (non-main ranks) or tensorboard_logger
    cannot be loaded; `.active` tells which.
    """

    def __init__(self, logdir, enabled=True):
        self._logger = None
        self.logdir = logdir
        if enabled:
            module = _load_tensorboard_logger()
            if module is not None:
                self._logger = module.Logger(logdir, flush_secs=5)

    @property
    def active(self):
        return self._logger is not None

    def log_value(self, tag, value, step):
        """XDimError naming the events folder when the write fails (a full disk)."""
        if self._logger is not None:
            try:
                self._logger.log_value(tag, float(value), int(step))
            except OSError as error:
                raise XDimError(f"{self.logdir}: cannot write the TensorBoard events ({error.strerror or error}); "
                                f"free some space, then --resume the last checkpoint") from None

    def log_values(self, values, step, prefix=""):
        """Log every (tag, number) of a dict at one step."""
        for tag, value in values.items():
            self.log_value(prefix + tag, value, step)
