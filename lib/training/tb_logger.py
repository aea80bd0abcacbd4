"""TensorBoard scalars through tensorboard_logger, written by a child process of their own.

tensorboard_logger 0.1.0 ships protobuf modules generated for protobuf 3; with protobuf >= 4
they load only under protobuf's pure-Python backend, which a process chooses once, before it
first imports protobuf. So the package runs in a small writer process started with that
backend, and this process never imports it: its protobuf backend is untouched and no import
order matters. Each scalar goes to the writer as one JSON line, answered once it is written,
so the events file holds every value logged so far (users' scripts read these files as
before).
"""
import importlib.util
import json
import os
import subprocess
import sys
import warnings

from lib.errors import XDimError

# The writer: imports tensorboard_logger under the pure-Python backend, answers "ready" (or
# "error ..."), then writes each [tag, value, step] line it reads and answers "ok" (or
# "oserror ..." when the file cannot be written).
WRITER = """
import json, sys, warnings
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import tensorboard_logger
    logger = tensorboard_logger.Logger(sys.argv[1], flush_secs=5)
except Exception as exc:
    print("error", type(exc).__name__ + ":", (str(exc).strip().splitlines() or [""])[0], flush=True)
    sys.exit(0)
print("ready", flush=True)
for line in sys.stdin:
    tag, value, step = json.loads(line)
    try:
        logger.log_value(tag, value, step)
    except OSError as error:
        print("oserror", error.strerror or error, flush=True)
        continue
    print("ok", flush=True)
"""


def _start_writer(logdir):
    """The writer process for `logdir`, or None (with a warning) when tensorboard_logger cannot load."""
    if importlib.util.find_spec("tensorboard_logger") is None:
        warnings.warn("TensorBoard logging disabled: tensorboard_logger is not installed "
                      "(pip install tensorboard_logger==0.1.0).", stacklevel=3)
        return None
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, logdir], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    answer = writer.stdout.readline().strip()
    if answer != "ready":
        writer.wait()
        warnings.warn("TensorBoard logging disabled: tensorboard_logger could not be imported "
                      f"({answer.removeprefix('error ') or 'the writer process ended'}).", stacklevel=3)
        return None
    return writer


class TBLogger:
    """`log_value(tag, value, step)` into an events file under `logdir`.

    A no-op when `enabled` is False (non-main ranks) or tensorboard_logger cannot be
    loaded; `.active` tells which. `close()` ends the writer (it also ends with this process).
    """

    def __init__(self, logdir, enabled=True):
        self.logdir = logdir
        self._writer = _start_writer(logdir) if enabled else None

    @property
    def active(self):
        return self._writer is not None

    def log_value(self, tag, value, step):
        """XDimError naming the events folder when the writer cannot write (a full disk)."""
        if self._writer is None:
            return
        try:
            self._writer.stdin.write(json.dumps([tag, float(value), int(step)]) + "\n")
            self._writer.stdin.flush()
            answer = self._writer.stdout.readline().strip()
        except (BrokenPipeError, OSError):
            answer = ""
        if answer.startswith("oserror "):
            raise XDimError(f"{self.logdir}: cannot write the TensorBoard events ({answer[len('oserror '):]}); "
                            f"free some space, then --resume the last checkpoint")
        if answer != "ok":
            self.close()
            warnings.warn("TensorBoard logging stopped: its writer process ended", stacklevel=2)

    def log_values(self, values, step, prefix=""):
        """Log every (tag, number) of a dict at one step."""
        for tag, value in values.items():
            self.log_value(prefix + tag, value, step)

    def close(self):
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.stdin.close()
            except OSError:
                pass
            writer.wait()
            writer.stdout.close()
