"""One training per output folder at a time: a lock file held for the whole run.

`train.lock` in the --model_name folder (and in the --logger_name folder when that is
another folder) holds the owner's pid, host and start time. It is created with
O_CREAT | O_EXCL, so of two runs starting together exactly one gets it, and removed
when the run ends, on success or error. A second run is refused in one line naming the
owner. A lock whose owner is gone (its host is this one and its pid no longer runs,
e.g. after kill -9) is taken over, and the take-over is logged. A lock written on
another host cannot be checked from here: it is refused, with the file to delete once
that run is known to be gone.

Under torchrun only rank 0 takes the locks; its outcome is broadcast, so a refusal
stops every rank with the same message instead of leaving the others waiting.

The same lock, under another file name, keeps two `analyze.py` runs from writing one
report folder at once (`hold_locks` with a LockUse other than TRAINING).
"""
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass

import torch.distributed as dist

from lib.errors import XDimError
from lib.formats.atomic import process_alive, read_pid_record
from lib.runtime import distributed

LOCK_NAME = "train.lock"


@dataclass(frozen=True)
class LockUse:
    """What a lock guards, for its messages: the kind of run and the options that choose the folder."""
    run: str
    options: str


TRAINING = LockUse("training", "--model_name / --logger_name")


def lock_owner():
    """This process as a lock file records it: {'pid', 'host', 'started'} (UTC, ISO 8601)."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def owner_is_gone(owner):
    """True when `owner` is a process of this host that no longer runs."""
    return owner.get("host") == socket.gethostname() and not process_alive(owner["pid"])


def _create(path, owner):
    """Create the lock file holding `owner`; False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(owner, f)
    return True


def refusal(folder, path, owner, use=TRAINING):
    """The one-line reason a run may not use `folder`, whose lock `path` belongs to `owner` (or None)."""
    if owner is None:
        return (f"{folder}: another {use.run} is starting in this folder (lock file {path}, not yet written); "
                f"wait for it, or delete {path} if no {use.run} runs, or use another {use.options}")
    where = "" if owner.get("host") == socket.gethostname() else f" on host {owner.get('host')}"
    advice = (f"stop it or wait for it to finish, or use another {use.options}"
              if not where else f"if that run is gone, delete {path}; else use another {use.options}")
    return (f"{folder}: in use by another {use.run} (pid {owner['pid']}{where}, started {owner.get('started')}, "
            f"lock file {path}); {advice}")


@dataclass
class HeldLock:
    """A lock file this run created, and whether the run also created its folder."""
    path: str
    created_folder: bool


def acquire(folder, owner, logger, name=LOCK_NAME, use=TRAINING):
    """Take `folder`'s lock (the file `name` in it) for `owner` -> HeldLock; XDimError when a live
    run holds it.

    A lock whose owner is gone is removed (and logged) and the creation retried once; a
    second failure means another run took it over first, which is refused as well.
    """
    created_folder = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    for _ in range(2):
        if _create(path, owner):
            return HeldLock(path, created_folder)
        holder = read_pid_record(path)
        if holder is None or not owner_is_gone(holder):
            raise XDimError(refusal(folder, path, holder, use))
        # Re-read just before removing, so that a lock another run took over meanwhile stays.
        if read_pid_record(path) == holder:
            os.remove(path)
            logger.warning("took over %s: its run (pid %d, started %s) is no longer running",
                           path, holder["pid"], holder.get("started"))
    raise XDimError(refusal(folder, path, read_pid_record(path), use))


def release(lock, owner):
    """Remove `lock` if it still is `owner`'s, and its folder if the run created it and left it empty."""
    if read_pid_record(lock.path) == owner:
        os.remove(lock.path)
    if lock.created_folder and not os.listdir(os.path.dirname(lock.path)):
        os.rmdir(os.path.dirname(lock.path))


def distinct_folders(folders):
    """`folders` without repeats (the same folder under two spellings counts once), in order."""
    seen, kept = set(), []
    for folder in folders:
        key = os.path.realpath(folder)
        if key not in seen:
            seen.add(key)
            kept.append(folder)
    return kept


def _acquire_all(folders, owner, logger, name, use):
    """Take the lock of every folder -> (HeldLocks, None), or ([], the refusal message)."""
    held = []
    try:
        for folder in folders:
            held.append(acquire(folder, owner, logger, name, use))
    except (XDimError, OSError) as error:
        for lock in reversed(held):
            release(lock, owner)
        if isinstance(error, OSError):
            error = f"{error.filename or folders[len(held)]}: cannot create the {use.run} lock ({error.strerror})"
        return [], str(error)
    return held, None


def share_from_main(value):
    """Rank 0's `value` on every rank (a picklable object); `value` itself outside torchrun."""
    if not distributed.is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def training_lock(folders, logger):
    """Hold the training lock of each of `folders` (--model_name, --logger_name) for the `with` block."""
    return hold_locks(folders, logger)


@contextlib.contextmanager
def hold_locks(folders, logger, name=LOCK_NAME, use=TRAINING):
    """Hold the lock `name` of each of `folders` for the `with` block.

    Rank 0 takes them (every process when not under torchrun); every rank raises the same
    XDimError when they are refused. The `with` value: the lock files held (rank 0).
    They are released when the block exits, however, with the folders that were created
    for them and stayed empty (a run that failed at once leaves nothing behind).
    """
    owner = lock_owner()
    held, error = [], None
    if distributed.is_main():
        held, error = _acquire_all(distinct_folders(folders), owner, logger, name, use)
    error = share_from_main(error)
    if error:
        raise XDimError(error)
    try:
        yield [lock.path for lock in held]
    finally:
        for lock in reversed(held):
            release(lock, owner)
