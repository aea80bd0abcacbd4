"""One check for the files this code writes with a format name: checkpoints, shortlist heads, index manifests.

Each such file, once loaded, is a dict whose `format` names what it is and, for
formats that have one, whose `version` says which layout it has. `check_versioned`
checks the name, the version and the fields a reader needs (with their types), and
raises one line saying which of the three is wrong:

    X: not a gallery index manifest
    X: written by version 2 of this format, this code reads version 1; rebuild the index
    X: damaged, field 'regions' missing; rebuild the index
    X: damaged, field 'count' is str, expected int; rebuild the index
"""
from dataclasses import dataclass, field

from lib.errors import XDimError


@dataclass(frozen=True)
class FileFormat:
    """How to recognise one versioned format.

    name: the value of the `format` key; what: the file's description in "X: not <what>";
    version: the newest version, the one this code writes (None: the format has no version
    key); older: earlier versions it still reads; unversioned: the version of a file
    without a `version` key (None: such a file is refused); fields: {key: type or tuple of
    types} every file holds; fix: what the user should do about a file of another version
    or a damaged one ("rebuild the index").
    """
    name: str
    what: str
    version: int = None
    fields: dict = field(default_factory=dict)
    fix: str = ""
    older: tuple = ()
    unversioned: int = None

    def readable(self):
        """The versions this code reads, oldest first."""
        return (*self.older, self.version)


def _type_names(kind):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _has_type(value, kind):
    """isinstance, except that True/False do not count as numbers."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _with_fix(message, spec):
    return f"{message}; {spec.fix}" if spec.fix else message


def check_fields(data, source, fields, spec):
    """XDimError "source: damaged, field 'k' missing" (or "is T, expected U") for the first field of
    `fields` ({key: type}) that the dict `data` lacks or holds with another type."""
    for key, kind in fields.items():
        if key not in data:
            raise XDimError(_with_fix(f"{source}: damaged, field '{key}' missing", spec))
        if not _has_type(data[key], kind):
            raise XDimError(_with_fix(f"{source}: damaged, field '{key}' is {type(data[key]).__name__}, "
                                      f"expected {_type_names(kind)}", spec))


def check_versioned(data, source, spec):
    """Check a loaded file `data` against the FileFormat `spec`; -> data.

    source: the file's name in messages. Raises XDimError (one line) when `data` is not
    a dict of this format, holds another version, or lacks a field of `spec.fields`.
    """
    if not isinstance(data, dict) or data.get("format") != spec.name:
        raise XDimError(f"{source}: not {spec.what}")
    if spec.version is not None and data.get("version", spec.unversioned) not in spec.readable():
        readable = " and ".join(map(str, spec.readable()))
        plural = "s" if len(spec.readable()) > 1 else ""
        raise XDimError(_with_fix(f"{source}: written by version {data.get('version')} of this format, "
                                  f"this code reads version{plural} {readable}", spec))
    check_fields(data, source, spec.fields, spec)
    return data
