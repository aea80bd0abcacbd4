"""The one exception type that scripts turn into a one-line message."""


class XDimError(Exception):
    """A user-facing error: the message is one line naming the file and the problem."""


def first_line(exc):
    """The first line of an exception's message (its type name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Interrupted(XDimError):
    """Ctrl-C stopped the work: one line saying what was kept (scripts exit 130, the shell's code)."""
