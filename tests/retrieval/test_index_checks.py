"""retrieve.py's checks before work and one-line errors: distill's temperature and learning rate,
non-finite or empty galleries, a damaged faiss.index, a malicious head, a features path to a text
file, a read-only --index parent, and the warning for a query of unknown words."""
import json
import os
import struct

import numpy as np
import pytest
import torch
from helpers import checkpoint_of, model_from_options, run_main

import retrieve
from lib.cli.train import default_options
from lib.data.precomp import open_split
from lib.formats.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """A tiny checkpoint and a caption index of the test split, built by the CLI."""
    folder = tmp_path_factory.mktemp("index_checks")
    data_path, data_name = tiny_precomp
    torch.manual_seed(0)
    opt = default_options(embed_size=16, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data_path, data_name=data_name, workers=0)
    path = str(folder / "model.pth")
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), path)
    split = open_split(data_path, data_name, "test")
    index = str(folder / "captions_index")
    run_main(retrieve.main, ["build", "--model_path", path, "--captions", split.captions_path, "--index", index,
                             "--no_progress", "--device", "cpu"])
    images = str(folder / "images_index")
    run_main(retrieve.main, ["build", "--model_path", path, "--images", split.images_path, "--index", images,
                             "--no_progress", "--device", "cpu"])
    return {"folder": folder, "path": path, "split": split, "captions_index": index, "images_index": images}


@pytest.mark.parametrize("option, value", [("--temperature", "0"), ("--temperature", "-1"),
                                           ("--temperature", "nan"), ("--temperature", "inf"),
                                           ("--learning_rate", "nan")])
def test_distill_refuses_a_non_positive_or_non_finite_setting_before_work(built, tmp_path, option, value):
    out = tmp_path / "head.pth"
    run = run_main(retrieve.main, ["distill", "--model_path", built["path"], option, value, "--out", str(out),
                                   "--device", "cpu"], expect=2)
    assert run.err == f"error: {option} {float(value)}: must be a positive number\n"
    assert not out.exists()


def test_build_refuses_infinite_features(built, tmp_path):
    images = np.array(built["split"].images, dtype=np.float32)
    images[3, 5, 7] = np.inf
    path = tmp_path / "bad_ims.npy"
    np.save(path, images)
    run = run_main(retrieve.main, ["build", "--model_path", built["path"], "--images", str(path),
                                   "--index", str(tmp_path / "idx"), "--no_progress", "--device", "cpu"], expect=2)
    assert run.err.startswith(f"error: {path}: image 3 holds NaN or infinite region features; ")
    assert not (tmp_path / "idx").exists()


def test_build_refuses_an_empty_caption_file(built, tmp_path):
    empty = tmp_path / "none_caps.txt"
    empty.write_text("")
    run = run_main(retrieve.main, ["build", "--model_path", built["path"], "--captions", str(empty),
                                   "--index", str(tmp_path / "idx"), "--no_progress", "--device", "cpu"], expect=2)
    assert run.err == (f"error: --captions {empty}: holds no captions; give a text file with one caption "
                       "per line\n")
    assert not (tmp_path / "idx").exists()


def _copy_index(source, target):
    os.makedirs(target)
    for name in os.listdir(source):
        with open(os.path.join(source, name), "rb") as f, open(os.path.join(target, name), "wb") as g:
            g.write(f.read())
    return str(target)


def test_query_of_an_empty_index_is_one_line(built, tmp_path):
    index = _copy_index(built["captions_index"], tmp_path / "idx")
    manifest = json.load(open(os.path.join(index, "manifest.json")))
    manifest["count"] = 0
    json.dump(manifest, open(os.path.join(index, "manifest.json"), "w"))
    run = run_main(retrieve.main, ["query", "--index", index, "--image_index", "0", "--device", "cpu"], expect=2)
    assert run.err == (f"error: {index}: the index holds no captions, there is nothing to search; rebuild it "
                       "from a gallery with at least one item\n")


def test_faiss_index_with_a_huge_length_field_is_damaged_not_a_memory_error(built, tmp_path):
    index = _copy_index(built["captions_index"], tmp_path / "idx")
    path = os.path.join(index, "faiss.index")
    data = bytearray(open(path, "rb").read())
    # IndexFlatIP: a 37-byte header, then the uint64 length of its vectors (in floats) and the floats
    assert struct.unpack_from("<Q", data, 37)[0] == (len(data) - 45) // 4
    data[37:45] = struct.pack("<Q", 2 ** 35)  # 128 GiB of floats
    open(path, "wb").write(bytes(data))
    run = run_main(retrieve.main, ["query", "--index", index, "--image_index", "0", "--device", "cpu"], expect=2)
    assert run.err.startswith(f"error: {path}: damaged (") and run.err.endswith("; rebuild the index\n")
    assert "Traceback" not in run.err


def test_query_images_that_are_a_text_file_get_one_plain_line(built, tmp_path):
    text = tmp_path / "notes_ims.npy"
    text.write_text("not features\n")
    run = run_main(retrieve.main, ["query", "--index", built["captions_index"], "--images", str(text),
                                   "--image_index", "0", "--device", "cpu"], expect=2)
    assert run.err == (f"error: {text}: is not a .npy file (no numpy header; a text or other file?); give a "
                       "{split}_ims.npy of region features\n")


def test_malicious_head_is_refused_in_the_checkpoint_loaders_words(built, tmp_path):
    head = tmp_path / "evil.shortlist.pth"
    torch.save({"format": "x", "payload": os.system}, head)  # a pickle that names os.system
    run = run_main(retrieve.main, ["build", "--model_path", built["path"], "--head", str(head), "--captions",
                                   built["split"].captions_path, "--index", str(tmp_path / "idx"),
                                   "--no_progress", "--device", "cpu"], expect=2)
    assert run.err == (f"error: {head}: holds Python objects (posix.system) that a safe load refuses to create, "
                       "so it is not read (X-Dim checkpoints and heads hold only tensors, numbers, strings and "
                       "options)\n")


def test_read_only_parent_is_named_as_the_folder_of_the_index(built, tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(parent))
    run = run_main(retrieve.main, ["build", "--model_path", built["path"], "--captions",
                                   built["split"].captions_path, "--index", str(parent / "idx"),
                                   "--no_progress", "--device", "cpu"], expect=2)
    assert run.err == f"error: --index {parent / 'idx'}: {parent} is not writable\n"


def test_query_of_only_unknown_words_warns(built):
    run = run_main(retrieve.main, ["query", "--index", built["images_index"], "--query", "zzqx qqzv",
                                   "--top_k", "2", "--device", "cpu"])
    assert ("warning: query 'zzqx qqzv': none of its words is in the checkpoint's vocabulary, all read as [UNK]; "
            "the results below do not depend on what was asked\n") in run.err
    known = run_main(retrieve.main, ["query", "--index", built["images_index"], "--query", "a red dog",
                                     "--top_k", "2", "--device", "cpu"])
    assert "warning" not in known.err


def test_query_while_a_rebuild_swaps_the_index_opens_the_new_one(built, tmp_path, monkeypatch):
    from lib.retrieval import index as retrieval
    index = _copy_index(built["images_index"], tmp_path / "idx")
    rebuilt = _copy_index(built["images_index"], tmp_path / "rebuilt")
    manifest = json.load(open(os.path.join(rebuilt, "manifest.json")))
    manifest["regions"] += 1  # the rebuilt gallery differs: its regions.npy disagrees with the old manifest
    json.dump(manifest, open(os.path.join(rebuilt, "manifest.json"), "w"))
    np.save(os.path.join(rebuilt, "regions.npy"),
            np.zeros((manifest["count"], manifest["regions"], manifest["embed_size"]), np.float16))
    read_manifest = retrieval.read_manifest
    reads, swaps = [], []

    def swapped_after_reading(folder):
        result = read_manifest(folder)
        reads.append(folder)
        if len(reads) == 2:  # a rebuild's swap while the index is opened, right after its manifest was read
            os.rename(index, str(tmp_path / "old"))
            os.rename(rebuilt, index)
            swaps.append(folder)
        return result

    monkeypatch.setattr(retrieval, "read_manifest", swapped_after_reading)
    run = run_main(retrieve.main, ["query", "--index", index, "--query", "a red dog", "--top_k", "2",
                                   "--device", "cpu"])
    assert swaps and "damaged" not in run.err and "top 2 of" in run.out
