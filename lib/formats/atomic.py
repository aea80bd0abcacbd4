"""Atomic outputs: a file or folder appears under its name complete, or not at all.

The one output rule, for every file and folder a command writes:

- A regular file `x` is written as `x.xdim-tmp-<pid>` next to it, synced and renamed
  onto `x`; a folder `d` is built as `d.xdim-staging-<pid>` and swapped into place (the
  previous `d` is renamed `d.xdim-old-<pid>` for the instant of the swap, then deleted).
  The `.xdim-` marker and the writer's process id make these names our own: no user file
  carries them, and only those of processes that no longer run are ever removed.
- An existing target that is not a regular file (a device such as /dev/null, a FIFO, a
  terminal, /dev/stdout) is written through, never replaced.
- A symbolic link is followed: its final target is replaced atomically, the link stays.
- An output that is the same file as an input of the command (by device and inode, so
  also through links and other spellings) is refused before any work (`check_outputs`).
- Several files that belong together (a converted split) are renamed into place as one
  step (`commit_together`); readers refuse a group whose renaming was cut short.

On any failure the temporary file or staging folder is removed and the previous `x` or
`d` is untouched. A full disk (ENOSPC, or EDQUOT for a quota) becomes one XDimError line
naming the target, the bytes to write when known, and the space free.
"""
import errno
import json
import os
import re
import shutil
import stat
import sys

from lib.errors import XDimError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Our staging names: `<target>.xdim-<kind>-<pid>`. `tmp` is a file being written, `staging`
# a folder being built, `old` a replaced folder whose swap was cut short.
OUR_NAME = re.compile(r"^(?P<target>.+)\.xdim-(?P<kind>tmp|staging|old)-(?P<pid>\d+)$")
# The journal of a group of files being renamed into place (commit_together).
JOURNAL_SUFFIX = ".xdim-commit"
# A link that names a descriptor of a process (/dev/stdout -> /proc/self/fd/1), not a place.
DESCRIPTOR_LINK = re.compile(r"^/(proc/[^/]+|dev)/fd/\d+$")


def temp_path(path):
    """The temporary file an atomic write of `path` goes through (named after this process)."""
    return f"{path}.xdim-tmp-{os.getpid()}"


def staging_path(folder):
    """The staging folder an atomic write of `folder` is built in (named after this process)."""
    return f"{folder.rstrip(os.sep)}.xdim-staging-{os.getpid()}"


def _replaced_path(folder):
    return f"{folder.rstrip(os.sep)}.xdim-old-{os.getpid()}"


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


# ---------------------------------------------------------------- where an output goes

def _names_descriptor(path):
    """True when `path` or a link on its way names an open descriptor (/dev/stdout, /dev/fd/1)."""
    for _ in range(40):  # the kernel's own limit on links followed
        if DESCRIPTOR_LINK.match(os.path.normpath(path)):
            return True
        if not os.path.islink(path):
            return False
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return False


def output_target(path):
    """-> (the path to write, True when it is written through in place rather than replaced).

    An existing target that is not a regular file or folder (a device, a FIFO, a socket,
    the terminal or pipe behind /dev/stdout) is written through, and so is a link into a
    process's open files (/dev/stdout redirected to a file: the shell's file is written, not
    replaced); any other link is followed to its final target, which is replaced; anything
    else is `path` itself. A plain path costs one lstat, a link one stat more.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path, False
    if not stat.S_ISLNK(mode):
        return path, not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # a dangling link: its target is created
        return os.path.realpath(path), False
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or _names_descriptor(path):
        return path, True
    return os.path.realpath(path), False


def _file_id(path):
    """(device, inode, is a regular file) of what `path` names (links followed), else None."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, stat.S_ISREG(info.st_mode)


def _files_of(path):
    """`path`, or for a folder every file under it."""
    if not os.path.isdir(path):
        return [path]
    return [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]


def check_outputs(outputs, inputs=()):
    """XDimError (nothing changed) when writing `outputs` would replace an input or one another.

    outputs, inputs: (option, path) pairs (None paths are skipped); an input folder stands
    for every file in it. Refused: an existing output that is the same file as an input, by
    device and inode (so also through links, hard links and other spellings), and two
    outputs that name one file. Costs a stat per output; the inputs are looked at only when
    an output already exists as a regular file (devices and FIFOs are written through).
    """
    named, existing = {}, {}
    for option, path in outputs:
        file_id = None if path is None else _file_id(path)
        if path is None or (file_id is not None and not file_id[2]):  # devices and FIFOs are written through
            continue
        key = file_id or os.path.realpath(path)
        if key in named:
            raise XDimError(f"{option} {path}: names the same file as {named[key]}; give each output "
                            f"its own file (nothing was changed)")
        named[key] = f"{option} {path}"
        if file_id is not None:
            existing[file_id] = named[key]
    if not existing:
        return
    for option, path in inputs:
        if path is None or not os.path.exists(path):
            continue
        for file in _files_of(path):
            output = existing.get(_file_id(file))
            if output is not None:
                inside = "" if file == path else f" (its file {file})"
                raise XDimError(f"{output}: is the same file as {option} {path}{inside}, an input of this "
                                f"command, which writing would replace; give another file (nothing was changed)")


def check_plain_name(option, name, folder):
    """XDimError unless `name` is one file name (no folder part, not '.' or '..'), so that the
    files named after it stay inside `folder`."""
    if name in ("", ".", "..") or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name:
        raise XDimError(f"{option} {name!r}: must be a plain name (no '{os.sep}', not '.' or '..'): the "
                        f"files named after it are written inside {folder} and nowhere else")


# ---------------------------------------------------------------- files

class _Stream:
    """A file written through (a device, a FIFO, a terminal): write, flush and close only, so that
    writers such as numpy's do not seek or ask for a position such files do not have."""

    def __init__(self, file):
        self.file, self.name = file, file.name

    def write(self, data):
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


class PendingFile:
    """A file being written under `temp_path(path)`; `commit` syncs it and renames it onto `path`.

    Use as a context manager (`with PendingFile(path) as f:` gives the open file; the
    rename happens when the block ends without an error, the temporary file is removed
    when it raises) or call `write`, `commit` and `discard` directly for a file that
    is streamed to over time. `size`: the bytes to write, when known, for the message
    of a full disk. The output rule (output_target) applies: a device or FIFO is written
    through, a link's target is replaced.
    """

    def __init__(self, path, mode="wb", encoding=None, size=None):
        self.path, self.size = path, size
        self.target, self.through = output_target(path)
        self.temp = None if self.through else temp_path(self.target)
        if not self.through:
            folder = os.path.dirname(os.path.abspath(self.target))
            os.makedirs(folder, exist_ok=True)
            report_removed(remove_stale(folder, lambda target: target == os.path.basename(self.target)))
        if self.through:
            self.file = _Stream(self._guard(lambda: open(self.target, mode, encoding=encoding)))
        else:
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

    def finish(self):
        """Flush, fsync (a regular file) and close; the file is complete but not yet under its name."""
        def close():
            self.file.flush()
            if not self.through:
                os.fsync(self.file.fileno())
            self.file.close()
        self._guard(close)

    def publish(self):
        """Rename the finished temporary file onto the target."""
        if not self.through:
            self._guard(lambda: os.replace(self.temp, self.target))

    def commit(self):
        """Flush, fsync and close the temporary file, then rename it onto `path`."""
        self.finish()
        self.publish()

    def discard(self):
        """Close and remove the temporary file; `path` is left as it was."""
        if hasattr(self, "file"):
            try:
                self.file.close()
            except OSError:  # the unwritten buffer of a full disk; the file goes anyway
                pass
        if self.temp and os.path.exists(self.temp):
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


# ---------------------------------------------------------------- groups of files

def journal_path(folder, group):
    """The journal that exists while the files of `group` in `folder` are renamed into place."""
    return os.path.join(folder, group + JOURNAL_SUFFIX)


def read_pid_record(path):
    """The JSON object of a file that records its writer's 'pid' (a group's journal:
    {'pid', 'files': [[temporary name, final name], ...]}; a lock file: {'pid', 'host', 'started'}),
    or None when the file is gone, unreadable or half written."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _create_journal(path, record):
    """Create the journal holding `record`, whole and exclusively: False when one exists."""
    draft = temp_path(path)
    with open(draft, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(draft, path)  # fails when the journal exists
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(draft)


def complete_interrupted_group(folder, group):
    """Finish the renames of a `commit_together` of `group` whose process died -> the paths it
    put into place ([] when there was none). XDimError when that process still runs."""
    path = journal_path(folder, group)
    remove_stale(folder, lambda target: target == os.path.basename(path))
    if not os.path.lexists(path):
        return []
    record = read_pid_record(path)
    if record is not None and process_alive(record["pid"]):
        raise XDimError(f"{folder}: process {record['pid']} is writing the files of {group} right now "
                        f"({path}); wait for it to finish")
    completed = []
    for temp, final in (record or {}).get("files", []):
        temp, final = os.path.join(folder, temp), os.path.join(folder, final)
        if os.path.exists(temp):
            os.replace(temp, final)
            completed.append(final)
    os.remove(path)
    return completed


def commit_together(pending, folder, group):
    """Put the PendingFiles `pending` (written in `folder`) into place as one step.

    Each is finished (synced) first; then a journal `<group>.xdim-commit` naming this process
    and every (temporary, final) name is created exclusively, the files are renamed, and the
    journal is removed. A reader that finds the journal refuses the group
    (check_group_complete); the next writer of the group completes the renames of a writer
    that died (complete_interrupted_group). Two writers never interleave their renames.
    """
    for file in pending:
        file.finish()
    path = journal_path(folder, group)
    record = {"pid": os.getpid(), "files": [[os.path.basename(file.temp), os.path.basename(file.target)]
                                            for file in pending if not file.through]}
    while not _create_journal(path, record):
        report_completed(complete_interrupted_group(folder, group))
    for file in pending:
        file.publish()
    os.remove(path)


def check_group_complete(folder, group, fix):
    """XDimError when the files of `group` in `folder` may not belong together: their renaming
    into place is under way or was cut short (its journal exists). `fix`: what to run then.
    Costs one lstat."""
    path = journal_path(folder, group)
    if not os.path.lexists(path):
        return
    record = read_pid_record(path)
    if record is not None and process_alive(record["pid"]):
        raise XDimError(f"{folder}: the files of {group} are being replaced right now (process "
                        f"{record['pid']}, {path}); wait a moment and run again")
    raise XDimError(f"{folder}: the files of {group} may not belong together: replacing them was "
                    f"interrupted ({path} is left); {fix}")


def report_completed(paths, stream=None):
    """Say on stderr which files of an interrupted group were put into place."""
    for path in paths:
        print(f"put {path} into place, completing an interrupted write", file=stream or sys.stderr)


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
        previous = _replaced_path(target)
        os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        if previous:
            os.rename(previous, target)
        raise
    if previous:
        _remove(previous)


def restore_interrupted_swap(target):
    """Put back a folder that a swap cut between its two renames left as `<target>.xdim-old-<pid>`.

    Only when `target` is missing and that process is gone; then XDimError saying so, so that
    what was restored is never replaced by the same command without the user seeing it."""
    parent, name = os.path.split(os.path.abspath(target))
    if os.path.lexists(target) or not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        match = OUR_NAME.match(entry)
        if (match and match.group("kind") == "old" and match.group("target") == name
                and not process_alive(int(match.group("pid"))) and not os.path.lexists(target)):
            os.rename(os.path.join(parent, entry), target)
            raise XDimError(f"{target}: put back from {os.path.join(parent, entry)}, where an interrupted "
                            f"replacement (process {match.group('pid')}) had moved it; nothing was written, "
                            f"run the command again to replace it")


class StagedFolder:
    """A folder built under `staging_path(target)` that replaces `target` when complete (atomic_folder)."""

    def __init__(self, target):
        self.target = output_target(target.rstrip(os.sep))[0]  # a link: the folder it leads to
        self.staging = staging_path(self.target)

    def __enter__(self):
        restore_interrupted_swap(self.target)
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


def remove_stale(folder, belongs):
    """Delete our leftovers in `folder` (OUR_NAME) of interrupted writes whose process is gone.

    belongs(target name) -> bool says which targets are the caller's (e.g. the files of
    one command), so the leftovers of other outputs stay; files that merely look alike
    (`scores.npy.old-2024`) never match. A leftover of a live process is left alone, and so
    is a replaced folder whose target is missing (restore_interrupted_swap puts it back).
    -> the removed paths.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        match = OUR_NAME.match(name)
        if match is None or not belongs(match.group("target")) or process_alive(int(match.group("pid"))):
            continue
        if match.group("kind") == "old" and not os.path.lexists(os.path.join(folder, match.group("target"))):
            continue
        path = os.path.join(folder, name)
        _remove(path)
        removed.append(path)
    return removed


def report_removed(paths, stream=None):
    """Say on stderr which leftovers of interrupted runs were removed."""
    for path in paths:
        print(f"removed {path}, left by an interrupted run", file=stream or sys.stderr)
