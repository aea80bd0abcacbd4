"""The one exception type that scripts turn into a one-line message."""


class XDimError(Exception):
    """A user-facing error: the message is one line naming the file and the problem."""
