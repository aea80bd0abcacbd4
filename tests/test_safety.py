"""Nothing a user has is lost: atomic outputs, a full disk as one line, safe --overwrite, no litter,
and one check of the versioned formats (lib/formats/atomic.py, lib/formats/versioned.py)."""
import builtins
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from butd_files import write_tsv
from script_runs import run_main
from test_retrieval import _checkpoint

import analyze as analyze_cli
import convert_features
import eval as eval_cli
import retrieve
from lib.data import butd
from lib.data.precomp import open_split
from lib.errors import XDimError
from lib.formats import atomic
from lib.formats.checkpoint import load_checkpoint
from lib.formats.versioned import FileFormat, check_versioned
from lib.retrieval import index as retrieval
from lib.retrieval import shortlist


def dead_pid():
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def folder_state(folder):
    """{relative path: bytes} of every file under `folder`."""
    state = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            state[os.path.relpath(path, folder)] = open(path, "rb").read()
    return state


class FullDisk:
    """A file object that accepts `room` bytes (or characters), writes them, then raises ENOSPC."""

    def __init__(self, handle, room):
        self._handle, self._room = handle, room

    def write(self, data):
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if size > self._room:
            self._handle.write(data[:self._room] if isinstance(data, str) else bytes(memoryview(data))[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(prefix, room): from now on, files opened for writing whose name starts with `prefix`
    (after any leading dots) take `room` bytes and then fail with ENOSPC, as on a full disk."""
    real_open = builtins.open
    rooms = {}

    def limited_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        room = next((r for prefix, r in rooms.items() if name.lstrip(".").startswith(prefix)), None)
        if room is None or not any(m in mode for m in "wax+"):
            return handle
        return FullDisk(handle, room)

    monkeypatch.setattr(builtins, "open", limited_open)
    return rooms.__setitem__


def one_error_line(run):
    """The message of a run that failed with one `error:` line (exit 2)."""
    assert run.code == 2 and run.err.startswith("error: ") and run.err.count("\n") == 1, run.err
    return run.err[len("error: "):-1]


# ---------------------------------------------------------------- the helper itself

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


# ---------------------------------------------------------------- eval.py outputs

def test_save_sims_over_an_existing_file_on_a_full_disk_keeps_it(tmp_path, full_disk):
    scores = np.arange(500, dtype=np.float32).reshape(10, 50) / 500
    np.save(tmp_path / "in.npy", scores)
    previous = np.ones((10, 50), np.float32)
    np.save(tmp_path / "out.npy", previous)
    full_disk("out.npy", 100)
    run = run_main(eval_cli.main, ["--ensemble", str(tmp_path / "in.npy"), "--save_sims",
                                   str(tmp_path / "out.npy")], expect=None)
    message = one_error_line(run)
    assert message.startswith(f"{tmp_path / 'out.npy'}: not written, disk full (2,000 bytes to write, ")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), previous)
    assert sorted(os.listdir(tmp_path)) == ["in.npy", "out.npy"]


def test_save_sims_without_the_npy_ending_still_gets_it(tmp_path):
    scores = np.arange(500, dtype=np.float32).reshape(10, 50) / 500
    np.save(tmp_path / "in.npy", scores)
    run_main(eval_cli.main, ["--ensemble", str(tmp_path / "in.npy"), "--save_sims", str(tmp_path / "out")])
    assert sorted(os.listdir(tmp_path)) == ["in.npy", "out.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), scores)


def test_eval_json_on_a_full_disk_leaves_no_partial_file(tmp_path, full_disk):
    np.save(tmp_path / "in.npy", np.eye(10, 50, dtype=np.float32))
    full_disk("m.json", 64)
    run = run_main(eval_cli.main, ["--ensemble", str(tmp_path / "in.npy"), "--json", str(tmp_path / "m.json")],
                   expect=None)
    assert one_error_line(run).startswith(f"{tmp_path / 'm.json'}: not written, disk full (")
    assert os.listdir(tmp_path) == ["in.npy"]


# ---------------------------------------------------------------- retrieve.py

@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """A checkpoint, the test split and an image index built from it."""
    folder = tmp_path_factory.mktemp("safety")
    path, _ = _checkpoint(folder, tiny_bert_dir, tiny_precomp, seed=0)
    split = open_split(*tiny_precomp, "test")
    index = str(folder / "index")
    run_main(retrieve.main, ["build", "--model_path", path, "--images", split.images_path, "--index", index,
                             "--no_progress"])
    return {"path": path, "split": split, "index": index}


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make any checkpoint load fail the test: a refusal must come before any work."""
    from lib.model.xdim_model import XDimModel

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")
    monkeypatch.setattr(XDimModel, "from_checkpoint", refuse)


def build(gallery, index, *extra, images=None):
    return run_main(retrieve.main, ["build", "--model_path", gallery["path"], "--images",
                                    images or gallery["split"].images_path, "--index", str(index),
                                    "--no_progress", *extra], expect=None)


def test_overwrite_refuses_a_folder_that_is_not_an_index(gallery, tmp_path, no_model_loading):
    mine = tmp_path / "mine"
    mine.mkdir()
    np.save(mine / "features_ims.npy", np.zeros((2, 36, 32), np.float32))
    (mine / "thesis").mkdir()
    (mine / "thesis" / "chapter1.tex").write_text("months of work", encoding="utf-8")
    before = folder_state(mine)
    message = one_error_line(build(gallery, mine, "--overwrite"))
    assert message == (f"--index {mine}: not a gallery index (no manifest.json of one), and --overwrite replaces "
                       f"only an index; give another --index (nothing was changed)")
    assert folder_state(mine) == before and sorted(os.listdir(tmp_path)) == ["mine"]


def test_index_equal_to_or_holding_an_input_is_refused(gallery, tmp_path, no_model_loading):
    data = tmp_path / "data"
    (data / "mine").mkdir(parents=True)
    images = data / "mine" / "g_ims.npy"
    np.save(images, np.zeros((2, 36, 32), np.float32))
    before = folder_state(tmp_path)
    for index in (data / "mine", data):
        for extra in ([], ["--overwrite"]):
            message = one_error_line(build(gallery, index, *extra, images=str(images)))
            assert message == (f"--index {index}: holds --images {images}, an input of this build; "
                               f"give another --index (nothing was changed)")
    checkpoint_folder = os.path.dirname(gallery["path"])
    message = one_error_line(build(gallery, checkpoint_folder, "--overwrite", images=str(images)))
    assert message.startswith(f"--index {checkpoint_folder}: holds --model_path {gallery['path']}, an input")
    assert folder_state(tmp_path) == before


def test_index_naming_a_file_is_refused_not_renamed(gallery, tmp_path, no_model_loading):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me", encoding="utf-8")
    images = tmp_path / "g_ims.npy"
    np.save(images, np.zeros((2, 36, 32), np.float32))
    for target in (notes, images):
        for extra in ([], ["--overwrite"]):
            message = one_error_line(build(gallery, target, *extra, images=str(images)))
            assert message == (f"--index {target}: is a file, not an index folder; give the name of a folder "
                               f"to create (nothing was changed)")
    assert sorted(os.listdir(tmp_path)) == ["g_ims.npy", "notes.txt"]
    assert notes.read_text(encoding="utf-8") == "keep me"


def test_overwrite_replaces_an_index_and_removes_a_stale_staging_folder(gallery, tmp_path):
    index = tmp_path / "idx"
    dead = dead_pid()
    (tmp_path / f"idx.xdim-staging-{dead}").mkdir()
    (tmp_path / f"idx.xdim-staging-{dead}" / "regions.npy").write_bytes(b"partial" * 100)
    (tmp_path / f"other.xdim-staging-{dead}").mkdir()
    assert build(gallery, index).code == 0
    run = build(gallery, index, "--overwrite")
    assert run.code == 0, run.err
    assert sorted(os.listdir(tmp_path)) == ["idx", f"other.xdim-staging-{dead}"]
    manifest = json.load(open(index / "manifest.json"))
    assert manifest["format"] == retrieval.INDEX_FORMAT and manifest["count"] == gallery["split"].n_images


def test_stale_staging_folder_removal_is_reported(gallery, tmp_path):
    stale = tmp_path / f"idx.xdim-staging-{dead_pid()}"
    stale.mkdir()
    run = build(gallery, tmp_path / "idx")
    assert run.code == 0 and f"removed {stale}, left by an interrupted run\n" in run.err
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_build_on_a_full_disk_keeps_the_old_index_and_leaves_no_staging(gallery, tmp_path, full_disk):
    index = tmp_path / "idx"
    assert build(gallery, index).code == 0
    before = folder_state(index)
    full_disk("regions.npy", 1000)
    message = one_error_line(build(gallery, index, "--overwrite"))
    assert "regions.npy: not written, disk full (" in message and " bytes to write, " in message
    assert folder_state(index) == before and os.listdir(tmp_path) == ["idx"]


def test_build_with_a_full_disk_at_the_faiss_index_is_one_line(gallery, tmp_path, full_disk):
    full_disk("faiss.index", 10)
    message = one_error_line(build(gallery, tmp_path / "idx"))
    assert "faiss.index: not written, disk full (" in message
    assert os.listdir(tmp_path) == []


def test_query_json_on_a_full_disk_keeps_the_old_file_or_writes_none(gallery, tmp_path, full_disk):
    old = tmp_path / "hits.json"
    old.write_text('["previous results"]', encoding="utf-8")
    full_disk("hits.json", 200)
    full_disk("new.json", 0)
    for target in (old, tmp_path / "new.json"):
        run = run_main(retrieve.main, ["query", "--index", gallery["index"], "--query", "a dog", "--json",
                                       str(target)], expect=None)
        assert one_error_line(run).startswith(f"{target}: not written, disk full (")
    assert os.listdir(tmp_path) == ["hits.json"] and old.read_text(encoding="utf-8") == '["previous results"]'


def broken_index(source, folder, **changes):
    """A copy of the index `source` whose manifest has `changes` (None deletes a key)."""
    copy = folder / "broken"
    shutil.copytree(source, copy)
    manifest = json.load(open(copy / "manifest.json"))
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    json.dump(manifest, open(copy / "manifest.json", "w"))
    return copy


@pytest.mark.parametrize("changes, message", [
    ({"regions": None}, "damaged, field 'regions' missing; rebuild the index"),
    ({"regions": "36"}, "damaged, field 'regions' is str, expected int; rebuild the index"),
    ({"count": True}, "damaged, field 'count' is bool, expected int; rebuild the index"),
    ({"gallery": "videos"}, "damaged, field 'gallery' is 'videos', expected 'images' or 'captions'; "
                            "rebuild the index"),
    ({"version": 2}, "written by version 2 of this format, this code reads version 1; rebuild the index"),
    ({"format": "something-else"}, "not a gallery index manifest"),
])
def test_damaged_manifest_is_one_line(gallery, tmp_path, changes, message):
    index = broken_index(gallery["index"], tmp_path, **changes)
    run = run_main(retrieve.main, ["query", "--index", str(index), "--model_path", gallery["path"],
                                   "--query", "a dog"], expect=None)
    assert one_error_line(run) == f"{index / 'manifest.json'}: {message}"


def test_captions_manifest_without_tokens_is_one_line(gallery, tmp_path):
    index = broken_index(gallery["index"], tmp_path, gallery="captions", regions=None)
    with pytest.raises(XDimError, match=r"manifest\.json: damaged, field 'tokens' missing; rebuild the index$"):
        retrieval.read_manifest(str(index))


# ---------------------------------------------------------------- versioned formats

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


# ---------------------------------------------------------------- convert_features.py

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


# ---------------------------------------------------------------- analyze.py

def test_analyze_rerun_replaces_the_report_whole_and_refuses_a_folder_of_other_files(gallery, tiny_precomp,
                                                                                      tmp_path):
    data_path, data_name = tiny_precomp
    out = tmp_path / "analysis"
    common = ["--model_path", gallery["path"], "--out", str(out), "--device", "cpu", "--no_progress"]
    first = run_main(analyze_cli.main, common + ["--data_path", data_path, "--data_name", data_name,
                                                 "--words", "bag", "cat", "--pair", "0", "0"])
    assert {"concept_bag.png", "concept_overlap.png", "pair_0_0.png"} <= set(os.listdir(out)), first.out
    run_main(analyze_cli.main, common)
    listed = json.load(open(out / "summary.json"))["figures"]
    assert sorted(os.listdir(out)) == sorted(listed + ["summary.json"]) and "concept_bag.png" not in listed
    assert sorted(os.listdir(tmp_path)) == ["analysis"]  # no staging folder, no lock left
    (out / "my_notes.txt").write_text("not a figure", encoding="utf-8")
    before = folder_state(out)
    message = one_error_line(run_main(analyze_cli.main, common, expect=2))
    assert message == (f"--out {out}: holds my_notes.txt, not part of a report of analyze.py; the report "
                       f"replaces the folder whole, so give a new or empty folder (nothing was changed)")
    assert folder_state(out) == before
