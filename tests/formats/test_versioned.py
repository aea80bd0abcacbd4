"""lib/formats/versioned.py: the versioned-file check."""
import pytest
import torch

from lib.errors import XDimError
from lib.formats.checkpoint import load_checkpoint
from lib.formats.versioned import FileFormat, check_versioned
from lib.retrieval import shortlist


def test_check_versioned_names_format_version_and_fields():
    spec = FileFormat("demo-format", "a demo file", 3, {"size": int, "names": (list, tuple)}, "write it again")
    good = {"format": "demo-format", "version": 3, "size": 4, "names": ["a"]}
    assert check_versioned(good, "f", spec) is good
    cases = [([1, 2], "f: not a demo file"),
             ({"format": "other"}, "f: not a demo file"),
             (dict(good, version=None), "f: written by version None of this format, this code reads version 3; "
                                        "write it again"),
             (dict(good, size=4.0), "f: damaged, field 'size' is float, expected int; write it again"),
             ({k: v for k, v in good.items() if k != "names"}, "f: damaged, field 'names' missing; write it again"),
             (dict(good, names="a"), "f: damaged, field 'names' is str, expected list or tuple; write it again")]
    for data, message in cases:
        with pytest.raises(XDimError) as caught:
            check_versioned(data, "f", spec)
        assert str(caught.value) == message


def test_checkpoint_and_head_use_the_versioned_check(tmp_path):
    path = str(tmp_path / "c.pth")
    torch.save({"format": "xdim", "epoch": 1}, path)
    with pytest.raises(XDimError, match=r"c\.pth: damaged, field 'model' missing; re-save it$"):
        load_checkpoint(path)
    torch.save({"format": "xdim", "model": [1, 2]}, path)
    with pytest.raises(XDimError, match=r"c\.pth: damaged, field 'model' is list, expected dict; re-save it$"):
        load_checkpoint(path)
    head = str(tmp_path / "h.shortlist.pth")
    torch.save({"format": shortlist.HEAD_FORMAT, "config": {}, "state": {}}, head)
    with pytest.raises(XDimError, match=r"h\.shortlist\.pth: damaged, field 'model_fingerprint' missing; "
                                        r"distill it again with retrieve\.py distill$"):
        shortlist.load_head(head, "0" * 64)
