"""The one wrapper every script's `main` goes through.

An expected failure (XDimError, or an OSError such as a missing file, a folder in
place of a file or a full disk) ends as one `error: ...` line on stderr and exit
code 2, never a traceback (Ctrl-C: one line, exit code 130); anything else is a bug and
keeps its traceback. A torchrun process group that the script opened is closed in every case.
Under torchrun each failure is printed once, naming the process (`report`).
"""
import functools
import sys

from lib.errors import Interrupted, XDimError
from lib.runtime import distributed

# The exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def describe_os_error(error):
    """'PATH: reason' for an OSError (its text alone when it names no file)."""
    reason = error.strerror or str(error)
    if error.filename:
        return f"{error.filename}: {reason[0].lower() + reason[1:] if reason else type(error).__name__}"
    return reason


def report(message):
    """Print `error: message` on stderr. Under torchrun the line names the process, and a failure that
    another process reported (the same line) or that `agree` copied from another process is not
    repeated: each failure is printed once, by a process that met it."""
    if message is None:
        return
    if distributed.launched_as_several():
        if not distributed.first_to_report(message):
            return
        message = f"process {distributed.launch_rank()}: {message}"
    print(f"error: {message}", file=sys.stderr)


def entry_point(main):
    """Decorate a script's `main(argv=None, ...) -> exit code or None` (None means 0)."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        code = 2
        try:
            return main(*args, **kwargs) or 0
        except distributed.OtherProcessFailed as error:
            message = None if distributed.launched_as_several() else str(error)
        except (Interrupted, KeyboardInterrupt) as error:
            message, code = str(error) or "interrupted", INTERRUPTED
        except XDimError as error:
            message = str(error)
        except OSError as error:
            message = describe_os_error(error)
        finally:
            distributed.close_launch_group()
        report(message)
        return code

    return run
