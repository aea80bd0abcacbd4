"""Running a script in a test so that a failure shows what the script printed.

`run_main(module.main, argv)` calls a script's main() in this process and
`run_command([...])` runs it as a process; both capture stdout and stderr and,
when the exit code is not the expected one, fail with both outputs in the
assertion message (not just `assert 2 == 0`).
"""
import contextlib
import io
import subprocess
from typing import NamedTuple


class ScriptRun(NamedTuple):
    """What a script did: exit code, standard output, standard error."""
    code: int
    out: str
    err: str


def _check_exit(what, run, expect):
    assert expect is None or run.code == expect, (
        f"{what} exited {run.code}, expected {expect}\n"
        f"--- stdout ---\n{run.out}--- stderr ---\n{run.err}")
    return run


def run_main(main, argv, expect=0):
    """main(argv) with stdout and stderr captured -> ScriptRun; fails showing both unless the exit code is
    `expect` (None: any code)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return _check_exit(f"{main.__module__}.main({argv})", ScriptRun(code, out.getvalue(), err.getvalue()), expect)


def run_command(args, expect=0, **kwargs):
    """subprocess.run(args) with its output captured as text -> ScriptRun; fails showing both outputs
    unless the exit code is `expect` (None: any code). kwargs go to subprocess.run (cwd, env, timeout)."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    return _check_exit(" ".join(map(str, args)), ScriptRun(result.returncode, result.stdout, result.stderr),
                       expect)
