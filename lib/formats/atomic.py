"""Atomic outputs: a file or folder appears under its name complete, or not at all.

A file `x` is written as `x.tmp-<pid>` next to it, synced and renamed onto `x`; a
folder `d` is built as `d.staging-<pid>` and swapped into place (the previous `d`
is renamed `d.old-<pid>` for the instant of the swap, then deleted). The names are
visible to `ls` and carry the writer's process id. On any failure the temporary
file or staging folder is removed and the previous `x` or `d` is untouched; a
process killed mid-write leaves its temporary name behind, and the next write of
the same target removes it (`remove_stale`) once that process is gone.

A full disk (ENOSPC, or EDQUOT for a quota) becomes one XDimError line naming the
target, the bytes to write when known, and the space free.
"""
import errno
import json
import os
import re
import shutil
import sys

from lib.errors import XDimError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Leftovers of an interrupted write, by name. Group `target` is the name of what was
# being written, group `pid` the writing process. `.old-<pid>` is a replaced folder
# whose swap was interrupted; the hidden `.x.<pid>.tmp` names are those earlier
# versions of checkpoint saves and convert_features.py wrote.
LEFTOVER_PATTERNS = (
    re.compile(r"^(?P<target>.+)\.tmp-(?P<pid>\d+)$"),
    re.compile(r"^(?P<target>.+)\.staging-(?P<pid>\d+)$"),
    re.compile(r"^(?P<target>.+)\.old-(?P<pid>\d+)$"),
    re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$"),
)
REPLACED_PATTERN = LEFTOVER_PATTERNS[2]


def temp_path(path):
    """The temporary file an atomic write of `path` goes through (named after this process)."""
    return f"{path}.tmp-{os.getpid()}"


def staging_path(folder):
    """The staging folder an atomic write of `folder` is built in (named after this process)."""
    return f"{folder.rstrip(os.sep)}.staging-{os.getpid()}"


def _existing_folder(path):
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return folder


def full_disk_error(err, path, size=None):
    """XDimError (one line naming `path`, `size` bytes to write if known, and the space free) when
    the OSError `err` is a full disk or quota; None for any other error."""
    if not isinstance(err, OSError) or err.errno not in FULL_DISK_ERRNOS:
        return None
    folder = _existing_folder(path)
    free = shutil.disk_usage(folder).free
    needed = f"{size:,} bytes to write, " if size is not None else ""
    kind = "disk full" if err.errno == errno.ENOSPC else "disk quota exceeded"
    return XDimError(f"{path}: not written, {kind} ({needed}{free:,} bytes free in {folder}); "
                     f"free some space and run again (any previous {os.path.basename(path)} is intact)")


class PendingFile:
    """A file being written under `temp_path(path)`; `commit` syncs it and renames it onto `path`.

    Use as a context manager (`with PendingFile(path) as f:` gives the open file; the
    rename happens when the block ends without an error, the temporary file is removed
    when it raises) or call `write`, `commit` and `discard` directly for a file that
    is streamed to over time. `size`: the bytes to write, when known, for the message
    of a full disk.
    """

    def __init__(self, path, mode="wb", encoding=None, size=None):
        self.path, self.size, self.temp = path, size, temp_path(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        report_removed(remove_stale(folder, lambda target: target == os.path.basename(path)))
        self.file = self._guard(lambda: open(self.temp, mode, encoding=encoding))

    def _guard(self, action):
        """action(); on an OSError the temporary file is removed, and a full disk becomes its XDimError."""
        try:
            return action()
        except OSError as err:
            self.discard()
            raise full_disk_error(err, self.path, self.size) or err from None

    def write(self, data):
        """Append `data` (bytes, or str for a text mode) to the temporary file."""
        return self._guard(lambda: self.file.write(data))

    def commit(self):
        """Flush, fsync and close the temporary file, then rename it onto `path`."""
        def finish():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp, self.path)
        self._guard(finish)

    def discard(self):
        """Close and remove the temporary file; `path` is left as it was."""
        if hasattr(self, "file"):
            try:
                self.file.close()
            except OSError:  # the unwritten buffer of a full disk; the file goes anyway
                pass
        if os.path.exists(self.temp):
            os.remove(self.temp)

    def __enter__(self):
        return self.file

    def __exit__(self, kind, err, traceback):
        if kind is None:
            self.commit()
            return False
        self.discard()
        error = full_disk_error(err, self.path, self.size)
        if error is not None:
            raise error from None
        return False


def atomic_file(path, mode="wb", encoding=None, size=None):
    """`with atomic_file(path) as f:` writes `path` through a temporary file (see PendingFile)."""
    return PendingFile(path, mode, encoding, size)


def write_text(path, text):
    """Write a str to `path` atomically (UTF-8)."""
    data = text.encode("utf-8")
    with atomic_file(path, size=len(data)) as f:
        f.write(data)


def write_json(path, data, indent=2):
    """Write `data` as JSON to `path` atomically: an existing file is replaced only by a complete one."""
    write_text(path, json.dumps(data, indent=indent))


# ---------------------------------------------------------------- folders

def _sync_tree(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def _remove(path):
    """Delete a file, a link, or a folder with everything in it."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def replace_folder(staging, target):
    """Move the finished folder `staging` onto `target`; a previous `target` folder is deleted only
    after the move succeeded (and is moved back if it failed). A file at `target` is never replaced."""
    if os.path.lexists(target) and not os.path.isdir(target):
        raise XDimError(f"{target}: is a file, not a folder; it was not replaced")
    previous = None
    if os.path.lexists(target):
        previous = f"{target.rstrip(os.sep)}.old-{os.getpid()}"
        os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        if previous:
            os.rename(previous, target)
        raise
    if previous:
        _remove(previous)


class StagedFolder:
    """A folder built under `staging_path(target)` that replaces `target` when complete (atomic_folder)."""

    def __init__(self, target):
        self.target = target.rstrip(os.sep)
        self.staging = staging_path(self.target)

    def __enter__(self):
        parent = os.path.dirname(os.path.abspath(self.target))
        report_removed(remove_stale(parent, lambda name: name == os.path.basename(self.target)))
        os.makedirs(self.staging)
        return self.staging

    def __exit__(self, kind, err, traceback):
        try:
            if kind is None:
                _sync_tree(self.staging)
                replace_folder(self.staging, self.target)
        except OSError as failure:
            raise full_disk_error(failure, self.target) or failure from None
        finally:
            if os.path.isdir(self.staging):
                shutil.rmtree(self.staging, ignore_errors=True)
        error = full_disk_error(err, self.target)
        if error is not None:
            raise error from None
        return False


def atomic_folder(target):
    """`with atomic_folder(target) as staging:` fill the folder `staging`; it replaces `target` when the
    block ends without an error, and is deleted (leaving `target` as it was) when it raises.

    The caller decides beforehand whether replacing an existing `target` is allowed.
    """
    return StagedFolder(target)


# ---------------------------------------------------------------- leftovers of killed processes

def process_alive(pid):
    """True when a process with this id runs on this machine (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _leftover(name):
    """(pattern, match) of the first LEFTOVER_PATTERNS entry `name` matches, else (None, None)."""
    for pattern in LEFTOVER_PATTERNS:
        match = pattern.match(name)
        if match:
            return pattern, match
    return None, None


def remove_stale(folder, belongs):
    """Delete the leftovers in `folder` of interrupted writes whose process is gone.

    belongs(target name) -> bool says which targets are the caller's (e.g. the files of
    one command), so other people's files of similar names stay. A leftover of a live
    process is left alone. A `.old-<pid>` folder whose target is missing (the swap was
    cut between its two renames) is moved back into place instead. -> the removed paths.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        pattern, match = _leftover(name)
        if match is None or not belongs(match.group("target")) or process_alive(int(match.group("pid"))):
            continue
        path = os.path.join(folder, name)
        target = os.path.join(folder, match.group("target"))
        if pattern is REPLACED_PATTERN and not os.path.lexists(target):
            os.rename(path, target)
            continue
        _remove(path)
        removed.append(path)
    return removed


def report_removed(paths, stream=None):
    """Say on stderr which leftovers of interrupted runs were removed."""
    for path in paths:
        print(f"removed {path}, left by an interrupted run", file=stream or sys.stderr)
