"""lib/formats/atomic.py: atomic files and folders, full disks, leftovers of dead processes."""
import errno
import json
import os

import pytest
from helpers import dead_pid, folder_state

from lib.errors import XDimError
from lib.formats import atomic


def test_atomic_file_leaves_the_previous_file_on_failure_and_writes_through_a_visible_name(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(target)) as f:
            f.write(b"half of the new")
            assert sorted(os.listdir(tmp_path)) == ["out.json", f"out.json.xdim-tmp-{os.getpid()}"]
            raise RuntimeError("cut")
    assert os.listdir(tmp_path) == ["out.json"] and target.read_text(encoding="utf-8") == "old"
    atomic.write_json(str(target), {"a": 1})
    assert os.listdir(tmp_path) == ["out.json"] and json.loads(target.read_text(encoding="utf-8")) == {"a": 1}


def test_full_disk_is_one_line_naming_the_file_the_bytes_and_the_space_free(tmp_path, full_disk):
    target = tmp_path / "big.bin"
    target.write_bytes(b"previous")
    full_disk("big.bin", 10)
    with pytest.raises(XDimError) as caught:
        with atomic.atomic_file(str(target), size=1000) as f:
            f.write(b"x" * 1000)
    free = caught.value.args[0].split("bytes to write, ")[1].split(" bytes free")[0]
    assert str(caught.value) == (f"{target}: not written, disk full (1,000 bytes to write, {free} bytes free in "
                                 f"{tmp_path}); free some space and run again (any previous big.bin is intact)")
    assert int(free.replace(",", "")) > 0
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["big.bin"]


def test_quota_error_is_named_as_such(tmp_path):
    error = atomic.full_disk_error(OSError(errno.EDQUOT, "quota"), str(tmp_path / "x"))
    assert "not written, disk quota exceeded (" in str(error)
    assert atomic.full_disk_error(OSError(errno.EACCES, "denied"), str(tmp_path / "x")) is None


def test_atomic_folder_replaces_only_when_complete(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "a.txt").write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(str(target)) as staging:
            assert staging == f"{target}.xdim-staging-{os.getpid()}"
            (tmp_path / os.path.basename(staging) / "b.txt").write_text("new", encoding="utf-8")
            raise RuntimeError("cut")
    assert sorted(os.listdir(tmp_path)) == ["report"] and folder_state(target) == {"a.txt": b"old"}
    with atomic.atomic_folder(str(target)) as staging:
        open(os.path.join(staging, "b.txt"), "w").write("new")
    assert sorted(os.listdir(tmp_path)) == ["report"] and folder_state(target) == {"b.txt": b"new"}


def test_stale_leftovers_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    (tmp_path / f"idx.xdim-staging-{dead}").mkdir()
    (tmp_path / f"idx.xdim-staging-{dead}" / "regions.npy").write_bytes(b"partial")
    (tmp_path / f"idx.xdim-staging-{alive}").mkdir()
    (tmp_path / f"s_ims.npy.xdim-tmp-{dead}").write_bytes(b"partial")
    (tmp_path / f"other.npy.xdim-tmp-{dead}").write_bytes(b"not ours")
    (tmp_path / f"gone.xdim-old-{dead}").mkdir()  # killed between the two renames of a swap: target missing
    removed = atomic.remove_stale(str(tmp_path), lambda target: target in ("idx", "s_ims.npy", "gone"))
    assert sorted(removed) == sorted(str(tmp_path / name) for name in
                                     (f"idx.xdim-staging-{dead}", f"s_ims.npy.xdim-tmp-{dead}"))
    assert sorted(os.listdir(tmp_path)) == sorted([f"gone.xdim-old-{dead}", f"idx.xdim-staging-{alive}",
                                                   f"other.npy.xdim-tmp-{dead}"])
