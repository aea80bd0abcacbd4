"""lib/retrieval/queries.py: the lines of a --queries file and its refusals, the warning for a text the
vocabulary does not know, and an image of a split picked by id or row."""
import numpy as np
import pytest

from lib.errors import XDimError
from lib.retrieval.queries import read_queries, split_image, warn_unknown_query


def test_read_queries_gives_the_lines(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("a dog on a beach\ntwo cats\n")
    assert read_queries(str(path)) == ["a dog on a beach", "two cats"]


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "is a folder, give a text file with one query per line"),
    (lambda p: None, "no such file"),
    (lambda p: p.write_text(" \n\n"), "is empty, give one query per line"),
])
def test_read_queries_refusals_name_the_option_and_the_fix(tmp_path, make, reason):
    path = tmp_path / "q.txt"
    make(path)
    with pytest.raises(XDimError) as error:
        read_queries(str(path))
    assert str(error.value) == f"--queries {path}: {reason}"


def test_the_warning_speaks_only_when_every_word_is_unknown(encoder, capsys):
    warn_unknown_query(encoder, "  qqqzzz xxyyww ")
    err = capsys.readouterr().err
    assert err.startswith("warning: query 'qqqzzz xxyyww': none of its words is in the checkpoint's vocabulary")
    warn_unknown_query(encoder, "qqqzzz dog")
    warn_unknown_query(encoder, "   ")
    assert capsys.readouterr().err == ""


@pytest.fixture
def split(tmp_path):
    """3 images of 4 regions (region r of image i holds i + r / 10), ids beside them."""
    images = np.arange(3)[:, None, None] + np.arange(4)[None, :, None] / 10 + np.zeros((3, 4, 5))
    path = tmp_path / "g_ims.npy"
    np.save(path, images.astype(np.float32))
    (tmp_path / "g_ids.txt").write_text("x\ny\nz\n")
    return str(path)


def test_split_image_by_id_and_by_row(split):
    label, regions, count = split_image(split, 5, image_id="z")
    assert label == f"image z (row 2 of {split})" and count == 4
    np.testing.assert_allclose(regions[:, 0], [2.0, 2.1, 2.2, 2.3], rtol=1e-6)
    label, regions, _ = split_image(split, 5, image_index=1)
    assert label == f"image y (row 1 of {split})" and regions[3, 4] == pytest.approx(1.3)


@pytest.mark.parametrize("asked, message", [
    ({"image_id": "w"}, "--image_id w: unknown id (not in the ids of {path})"),
    ({"image_index": 3}, "--image_index 3: out of range, {path} holds images 0..2"),
    ({"image_index": -1}, "--image_index -1: out of range, {path} holds images 0..2"),
])
def test_split_image_refuses_an_unknown_image(split, asked, message):
    with pytest.raises(XDimError) as error:
        split_image(split, 5, **asked)
    assert str(error.value) == message.format(path=split)
