"""lib/data/butd.py and convert_features.py: extractor output to the precomp layout, its errors and atomic writes."""
import base64
import os

import numpy as np
import pytest
from helpers import dead_pid, folder_state, one_error_line, run_main, tsv_line, write_npz, write_tsv

import convert_features
from lib.data import butd
from lib.data.precomp import open_split
from lib.errors import XDimError

DIM = 8


def _image(seed, n_boxes, dim=DIM):
    """(image id, width, height, boxes (n, 4), features (n, dim)) of one synthetic image."""
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 500, size=(n_boxes, 4)).astype(np.float32)
    return f"img{seed}", 640 + seed, 480 + seed, boxes, rng.standard_normal((n_boxes, dim)).astype(np.float32)


def _expected(image, regions=36):
    """Hand-built rows of one image: first `regions` boxes, zero-padded; info (w, h, real)."""
    _, width, height, boxes, feats = image
    real = min(len(feats), regions)
    padded_feats = np.zeros((regions, feats.shape[1]), np.float32)
    padded_boxes = np.zeros((regions, 4), np.float32)
    padded_feats[:real], padded_boxes[:real] = feats[:real], boxes[:real]
    return padded_feats, padded_boxes, [width, height, real]


def _check_split(folder, split, images, regions=36):
    ims = np.load(os.path.join(folder, f"{split}_ims.npy"))
    boxes = np.load(os.path.join(folder, f"{split}_boxes.npy"))
    info = np.load(os.path.join(folder, f"{split}_image_info.npy"))
    with open(os.path.join(folder, f"{split}_ids.txt"), encoding="utf-8") as f:
        ids = f.read().splitlines()
    assert ims.shape == (len(images), regions, DIM) and ims.dtype == np.float32
    assert boxes.shape == (len(images), regions, 4)
    assert ids == [image[0] for image in images]
    for row, image in enumerate(images):
        want_feats, want_boxes, want_info = _expected(image, regions)
        np.testing.assert_array_equal(ims[row], want_feats)
        np.testing.assert_array_equal(boxes[row], want_boxes)
        assert info[row].tolist() == want_info


def _folder_state(folder):
    """{name: bytes} of every file in a folder (to show an error changed nothing)."""
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_tsv_converts_truncating_and_padding_and_opens_as_a_split(tmp_path):
    images = [_image(1, 40), _image(2, 36), _image(3, 5)]
    tsv_a = write_tsv(tmp_path / "a.tsv", images[:2])
    tsv_b = write_tsv(tmp_path / "b.tsv", images[2:])
    out = tmp_path / "out"
    run_main(convert_features.main, ["--tsv", tsv_a, tsv_b, "--out", str(out), "--split", "gallery",
                                     "--no_progress"])
    _check_split(out, "gallery", images)
    (out / "gallery_caps.txt").write_text("a dog\na cat\na horse\n", encoding="utf-8")
    split = open_split(str(tmp_path), "out", "gallery", img_dim=DIM)
    assert split.n_images == 3 and split.captions_per_image == 1
    assert sorted(os.listdir(out)) == ["gallery_boxes.npy", "gallery_caps.txt", "gallery_ids.txt",
                                       "gallery_image_info.npy", "gallery_ims.npy"]


def test_npz_folder_converts_in_file_name_order_with_other_region_count(tmp_path):
    images = [_image(5, 12), _image(4, 3)]
    write_npz(tmp_path / "npz", images[0], name="b_second")
    write_npz(tmp_path / "npz", images[1], name="a_first")
    out = tmp_path / "out"
    run_main(convert_features.main, ["--npz_dir", str(tmp_path / "npz"), "--out", str(out), "--split", "s",
                                     "--regions", "10", "--no_progress"])
    renamed = [("a_first",) + images[1][1:], ("b_second",) + images[0][1:]]
    _check_split(out, "s", renamed, regions=10)


def test_count_tsv_records_skips_blank_lines(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text(tsv_line(*_image(1, 2)) + "\n" + tsv_line(*_image(2, 2)) + "\n\n", encoding="utf-8")
    assert butd.count_tsv_records([str(path)]) == 2
    assert [r.image_id for r in butd.read_tsv([str(path)])] == ["img1", "img2"]


def _bad_line(kind):
    image_id, width, height, boxes, feats = _image(9, 4)
    good = tsv_line(image_id, width, height, boxes, feats)
    fields = good.rstrip("\n").split("\t")
    if kind == "fields":
        return "\t".join(fields[:5]) + "\n"
    if kind == "base64":
        fields[5] = fields[5][:-3] + "!!!"
    elif kind == "num_boxes":
        fields[3] = "four"
    elif kind == "box_count":
        fields[3] = "5"
    elif kind == "dim":
        fields[5] = base64.b64encode(np.zeros((4, DIM + 1), np.float32).tobytes()).decode()
    elif kind == "nan":
        fields[5] = base64.b64encode(np.full((4, DIM), np.nan, np.float32).tobytes()).decode()
    elif kind == "duplicate":
        fields[0] = "img1"
    return "\t".join(fields) + "\n"


@pytest.mark.parametrize("kind, message", [
    ("fields", "5 tab-separated fields, expected 6"),
    ("base64", "features is not valid base64"),
    ("num_boxes", "num_boxes is not an integer"),
    ("box_count", "boxes hold 16 values, expected 4 x num_boxes = 20"),
    ("dim", "features of size 9, earlier images have 8"),
    ("nan", "NaN or infinite"),
    ("duplicate", "image id 'img1' appears twice"),
])
def test_malformed_tsv_record_names_its_line_and_changes_nothing(tmp_path, capsys, kind, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gallery_ims.npy").write_bytes(b"old contents")
    before = _folder_state(out)
    tsv = tmp_path / "f.tsv"
    tsv.write_text(tsv_line(*_image(1, 3)) + tsv_line(*_image(2, 3)) + _bad_line(kind), encoding="utf-8")
    code = convert_features.main(["--tsv", str(tsv), "--out", str(out), "--split", "gallery",
                                  "--overwrite", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {tsv} line 3: ") and message in err
    assert _folder_state(out) == before


def test_existing_split_is_kept_without_overwrite(tmp_path):
    tsv = write_tsv(tmp_path / "f.tsv", [_image(1, 3)])
    (tmp_path / "s_ids.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(XDimError, match=r"s_ids\.txt: already exists \(pass --overwrite"):
        butd.convert(butd.read_tsv([tsv]), 1, str(tmp_path), "s", progress=False)
    assert (tmp_path / "s_ids.txt").read_text(encoding="utf-8") == "mine\n"


def test_npz_errors_name_the_file(tmp_path):
    folder = tmp_path / "npz"
    path = write_npz(folder, _image(1, 4))
    np.savez(os.path.join(folder, "broken.npz"), x=np.zeros((4, DIM), np.float32))
    with pytest.raises(XDimError, match=r"broken\.npz: missing bbox, num_bbox, image_w, image_h"):
        list(butd.read_npz(butd.list_npz(str(folder))))
    np.savez(os.path.join(folder, "broken.npz"), x=np.zeros((DIM, 4), np.float32), bbox=np.zeros((4, 4)),
             num_bbox=4, image_w=1, image_h=1)
    with pytest.raises(XDimError, match=r"broken\.npz: x has shape \(8, 4\), expected \(num_bbox = 4"):
        list(butd.read_npz([os.path.join(folder, "broken.npz")]))
    with open(os.path.join(folder, "broken.npz"), "wb") as f:
        f.write(b"PK not a zip")
    with pytest.raises(XDimError, match=r"broken\.npz: not a readable \.npz file"):
        list(butd.read_npz([os.path.join(folder, "broken.npz")]))
    assert [r.image_id for r in butd.read_npz([path])] == ["img1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(XDimError, match="empty: holds no .npz files"):
        butd.list_npz(str(tmp_path / "empty"))


def test_fewer_records_than_counted_is_an_error_and_writes_nothing(tmp_path):
    tsv = write_tsv(tmp_path / "f.tsv", [_image(1, 3), _image(2, 3)])
    out = tmp_path / "out"
    with pytest.raises(XDimError, match="read 2 image records, expected 3"):
        butd.convert(butd.read_tsv([tsv]), 3, str(out), "s", progress=False)
    assert os.listdir(out) == []


def region_record(image_id, n_boxes, dim=4):
    rng = np.random.default_rng(n_boxes)
    return butd.RegionRecord(image_id, 640, 480, rng.uniform(0, 9, (n_boxes, 4)).astype(np.float32),
                             rng.standard_normal((n_boxes, dim)).astype(np.float32), f"record {image_id}")


def test_converter_counts_an_image_of_exactly_36_boxes_as_neither_padded_nor_cut(tmp_path):
    # catches: `padded += len(features) <= regions` (or `truncated += ... >= regions`).
    records = [region_record("exact", 36), region_record("short", 35), region_record("long", 37)]
    summary = butd.convert(records, 3, str(tmp_path), "s", regions=36, progress=False)
    assert (summary.padded, summary.truncated) == (1, 1)
    info = np.load(tmp_path / "s_image_info.npy")
    assert info[:, 2].tolist() == [36, 35, 36]


def _records(n, regions=5, dim=8):
    rng = np.random.default_rng(0)
    return [(f"img{i}", 640, 480, rng.random((regions, 4), dtype=np.float32),
             rng.standard_normal((regions, dim)).astype(np.float32)) for i in range(n)]


def test_conversion_writes_through_visible_names_and_cleans_up_on_failure(tmp_path):
    seen = []

    def records():
        for number, (image_id, width, height, boxes, features) in enumerate(_records(3)):
            if number == 2:
                seen.extend(sorted(os.listdir(tmp_path / "out")))
                raise XDimError("f.tsv line 3: bad")
            yield butd.RegionRecord(image_id, width, height, boxes, features, f"f.tsv line {number + 1}")

    with pytest.raises(XDimError, match="line 3: bad"):
        butd.convert(records(), 3, str(tmp_path / "out"), "g", progress=False)
    pid = os.getpid()
    assert seen == [f"g_boxes.npy.xdim-tmp-{pid}", f"g_ids.txt.xdim-tmp-{pid}", f"g_image_info.npy.xdim-tmp-{pid}",
                    f"g_ims.npy.xdim-tmp-{pid}"]
    assert os.listdir(tmp_path / "out") == []


def test_conversion_removes_leftovers_of_a_killed_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid()
    leftovers = [f"g_ims.npy.xdim-tmp-{dead}", f"g_boxes.npy.xdim-tmp-{dead}"]
    for name in leftovers:
        (out / name).write_bytes(b"269 MB of partial features")
    (out / f"h_ims.npy.xdim-tmp-{dead}").write_bytes(b"another split's")
    tsv = write_tsv(tmp_path / "f.tsv", _records(2))
    run = run_main(convert_features.main, ["--tsv", tsv, "--out", str(out), "--split", "g", "--no_progress"])
    for name in leftovers:
        assert f"removed {out / name}, left by an interrupted run\n" in run.err
    assert sorted(os.listdir(out)) == ["g_boxes.npy", "g_ids.txt", "g_image_info.npy", "g_ims.npy",
                                       f"h_ims.npy.xdim-tmp-{dead}"]


def test_conversion_on_a_full_disk_names_the_file_and_keeps_the_old_split(tmp_path, full_disk):
    out = tmp_path / "out"
    tsv = write_tsv(tmp_path / "f.tsv", _records(2))
    run_main(convert_features.main, ["--tsv", tsv, "--out", str(out), "--split", "g", "--no_progress"])
    before = folder_state(out)
    full_disk("g_ims.npy", 300)
    tsv = write_tsv(tmp_path / "f.tsv", _records(4))
    run = run_main(convert_features.main, ["--tsv", tsv, "--out", str(out), "--split", "g", "--overwrite",
                                           "--no_progress"], expect=None)
    ims_bytes = 128 + 4 * 36 * 8 * 4
    assert one_error_line(run).startswith(f"{out / 'g_ims.npy'}: not written, disk full ({ims_bytes:,} bytes "
                                          f"to write, ")
    assert folder_state(out) == before
