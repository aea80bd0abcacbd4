"""lib.formats.checkpoint: copying checkpoint.pth onto model_best.pth is atomic."""
import errno
import os
import shutil

import pytest

from lib.errors import XDimError
from lib.formats import checkpoint


def test_a_copy_that_fails_midway_leaves_the_previous_best_intact(tmp_path, monkeypatch):
    # catches: copy_checkpoint writing model_best.pth in place (`open(dst, "wb")`), which truncates
    # the previous best model before the copy can fail.
    source, best = tmp_path / "checkpoint.pth", tmp_path / "model_best.pth"
    source.write_bytes(b"new weights " * 1000)
    best.write_bytes(b"previous best weights")
    copy = shutil.copyfileobj

    def half_then_full_disk(src, dst, *args):
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", half_then_full_disk)
    with pytest.raises((XDimError, OSError)):
        checkpoint.copy_checkpoint(str(source), str(best))
    assert best.read_bytes() == b"previous best weights"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth", "model_best.pth"]
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    checkpoint.copy_checkpoint(str(source), str(best))
    assert best.read_bytes() == source.read_bytes()
