"""retrieve.py build --image_folder / --update, query over photos and --query_image (lib/retrieval/folder.py):
scores against direct X-Dim scores, the stable order, skipped files, refusals, and an update that encodes
only what changed while the old index keeps answering."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import checkpoint_of, model_from_options, run_main
from photos import GRID_CELLS, backbone_checkpoint, tree_state, write_album, write_photo

import retrieve
from lib.cli.train import default_options
from lib.data.images import PixelConfig
from lib.data.precomp import CaptionTokenizer
from lib.errors import XDimError
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer
from lib.retrieval import folder as folders
from lib.retrieval import index as retrieval

FLOAT16_ATOL = 2e-2  # embeddings are stored in float16
QUERY = "a red car near a blue dog"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert_dir):
    """A backbone checkpoint, an album and its index built by the CLI (with what it printed)."""
    base = tmp_path_factory.mktemp("photos")
    model_path = base / "grid.pth"
    model = backbone_checkpoint(model_path, tiny_bert_dir)
    album = str(base / "album")
    names = write_album(album)
    before = tree_state(album)
    index = str(base / "index")
    run = run_main(retrieve.main, ["build", "--model_path", str(model_path), "--image_folder", album,
                                   "--index", index, "--no_progress", "--batch_size", "4", "--workers", "1"])
    return {"base": base, "model_path": str(model_path), "model": model, "album": album, "names": names,
            "index": index, "run": run, "before": before}


def direct_scores(model, album, items, text):
    """float32 X-Dim scores of `text` against the photos `items`, decoded and encoded here."""
    pixels = torch.stack([folders.load_pixels(os.path.join(album, item), PixelConfig.for_model(model.config))
                          for item in items])
    encoder = CaptionTokenizer(load_tokenizer(model.bert_path), 64)
    ids = torch.tensor([encoder.encode(text)])
    with torch.no_grad():
        return model.forward_sim(model.encode_images(pixels), model.encode_captions(ids), torch.tensor([ids.shape[1]]))[:, 0].numpy()


def test_scan_lists_photos_recursively_in_sorted_relative_paths(built):
    files = folders.scan_image_folder(built["album"])
    assert [f.path for f in files] == built["names"]
    assert "notes.txt" not in [f.path for f in files]
    assert any(f.path.endswith(".JPG") for f in files)  # suffixes in any case


def test_build_indexes_every_readable_photo_and_lists_the_broken_one(built):
    manifest = retrieval.read_manifest(built["index"])
    items = retrieval.GalleryIndex._read_items(built["index"], manifest["count"])
    assert items == [name for name in built["names"] if name != "broken.jpg"]
    assert manifest["regions"] == GRID_CELLS
    assert [entry["path"] for entry in manifest["source"]["skipped"]] == ["broken.jpg"]
    reason = manifest["source"]["skipped"][0]["reason"]
    assert "runcated" in reason and built["album"] not in reason
    assert "warning:" in built["run"].err and "broken.jpg" in built["run"].err
    assert "indexed 10 photos" in built["run"].out and "(1 unreadable, skipped)" in built["run"].out


def test_nothing_in_the_folder_is_written(built):
    assert tree_state(built["album"]) == built["before"]


def test_stored_cells_are_the_model_embeddings_of_the_photos(built):
    model, album = built["model"], built["album"]
    regions = np.load(os.path.join(built["index"], "regions.npy"))
    pixels = folders.load_pixels(os.path.join(album, "home/p01.png"), PixelConfig(128, "detector"))
    with torch.no_grad():
        expected = model.encode_images(pixels[None])[0].numpy()
    row = retrieval.GalleryIndex._read_items(built["index"], len(regions)).index("home/p01.png")
    np.testing.assert_allclose(regions[row].astype(np.float32), expected, atol=2e-3, rtol=0)


def test_text_query_returns_paths_with_direct_scores(built, tmp_path):
    out = tmp_path / "hits.json"
    run = run_main(retrieve.main, ["query", "--index", built["index"], "--query", QUERY, "--top_k", "10",
                                   "--json", str(out)])
    hits = json.loads(out.read_text())[0]["hits"]
    items = [hit["item"] for hit in hits]
    assert sorted(items) == [name for name in built["names"] if name != "broken.jpg"]
    reference = direct_scores(built["model"], built["album"], items, QUERY)
    assert np.ptp(reference) > 0.1  # photos the model tells apart, so the comparison can fail
    np.testing.assert_allclose([hit["score"] for hit in hits], reference, atol=FLOAT16_ATOL, rtol=0)
    assert [hit["rank"] for hit in hits] == list(range(1, 11))
    assert f"1. {hits[0]['score']:8.4f}" in run.out and items[0] in run.out


def test_query_image_searches_captions_by_a_photo(built, tmp_path):
    captions = tmp_path / "caps.txt"
    captions.write_text("a red car\na blue dog near a tree\ntwo cats on a green bench\n")
    index = str(tmp_path / "caps_index")
    run_main(retrieve.main, ["build", "--model_path", built["model_path"], "--captions", str(captions),
                             "--index", index, "--no_progress"])
    photo = os.path.join(built["album"], "trips/p00.jpg")
    out = tmp_path / "hits.json"
    run_main(retrieve.main, ["query", "--index", index, "--query_image", photo, "--json", str(out)])
    hits = json.loads(out.read_text())[0]["hits"]
    assert sorted(hit["item"] for hit in hits) == sorted(captions.read_text().splitlines())
    for hit in hits:
        expected = direct_scores(built["model"], built["album"], ["trips/p00.jpg"], hit["item"])[0]
        assert abs(hit["score"] - expected) < FLOAT16_ATOL
    not_photo = run_main(retrieve.main, ["query", "--index", index, "--query_image",
                                         os.path.join(built["album"], "notes.txt")], expect=2)
    assert not_photo.err.startswith("error: --query_image ") and "not an image file" in not_photo.err
    assert len(not_photo.err.strip().splitlines()) == 1


def test_a_region_checkpoint_is_refused_naming_the_mode_that_can(built, tmp_path, tiny_bert_dir):
    opt = default_options(embed_size=16, img_dim=32, bert_path=tiny_bert_dir, device="cpu", workers=0)
    path = str(tmp_path / "regions.pth")
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), path)
    run = run_main(retrieve.main, ["build", "--model_path", path, "--image_folder", built["album"],
                                   "--index", str(tmp_path / "idx"), "--no_progress"], expect=2)
    assert run.err.count("\n") == 1 and "region-feature model" in run.err
    assert "--precomp_enc_type backbone" in run.err
    assert not os.path.exists(tmp_path / "idx")


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"), ("empty", "is empty"), ("no_images", "no JPEG, PNG or WebP file"),
    ("outside_link", "outside the folder"), ("index_inside", "lies inside --image_folder")])
def test_bad_folders_are_one_error_line_before_any_work(built, tmp_path, case, message):
    album = tmp_path / "album"
    album.mkdir()
    index = tmp_path / "idx"
    if case == "missing":
        album.rmdir()
    elif case == "no_images":
        (album / "a.txt").write_text("x")
    elif case == "outside_link":
        write_photo(str(album / "ok.png"), (1, 2, 3))
        outside = write_photo(str(tmp_path / "elsewhere.jpg"), (9, 9, 9))
        os.symlink(outside, album / "link.jpg")
    elif case == "index_inside":
        write_photo(str(album / "ok.png"), (1, 2, 3))
        index = album / "idx"
    run = run_main(retrieve.main, ["build", "--model_path", built["model_path"], "--image_folder", str(album),
                                   "--index", str(index), "--no_progress"], expect=2)
    assert run.err.startswith("error: ") and message in run.err and run.err.count("\n") == 1
    assert not os.path.exists(index)


def test_a_link_inside_the_folder_is_an_item(built, tmp_path):
    album = tmp_path / "album"
    write_photo(str(album / "a.png"), (200, 0, 0))
    os.symlink("a.png", album / "b.png")
    assert [f.path for f in folders.scan_image_folder(str(album))] == ["a.png", "b.png"]


def _copy_index_state(index):
    return {name: open(os.path.join(index, name), "rb").read() for name in sorted(os.listdir(index))}


def test_update_encodes_only_the_difference_and_equals_a_fresh_build(built, tmp_path, monkeypatch):
    album = str(tmp_path / "album")
    shutil.copytree(built["album"], album)
    index = str(tmp_path / "index")
    common = ["--model_path", built["model_path"], "--no_progress", "--batch_size", "4"]
    run_main(retrieve.main, ["build", "--image_folder", album, "--index", index, *common])
    os.remove(os.path.join(album, "home/p01.png"))
    write_photo(os.path.join(album, "new/q.webp"), (0, 250, 0))
    write_photo(os.path.join(album, "trips/p00.jpg"), (250, 250, 0), seed=7)  # changed content
    os.utime(os.path.join(album, "trips/p00.jpg"), ns=(1, 10**18))

    encoded, answers = [], []
    original = folders.encode_files

    def watching(model, encoder, root, files, *args, **kwargs):
        encoded.extend(f.path for f in files)
        # while the update encodes, the old index still answers
        answers.append(run_main(retrieve.main, ["query", "--index", index, "--query", QUERY]).out)
        return original(model, encoder, root, files, *args, **kwargs)

    monkeypatch.setattr(folders, "encode_files", watching)
    run = run_main(retrieve.main, ["build", "--image_folder", album, "--index", index, "--update", *common])
    assert sorted(encoded) == ["new/q.webp", "trips/p00.jpg"]  # not the unchanged ones, not broken.jpg again
    assert "home/p01.png" in answers[0]
    assert "(2 encoded, 8 kept, 1 removed; 1 unreadable, skipped)" in run.out
    monkeypatch.setattr(folders, "encode_files", original)

    fresh = str(tmp_path / "fresh")
    run_main(retrieve.main, ["build", "--image_folder", album, "--index", fresh, *common])
    updated, rebuilt = _copy_index_state(index), _copy_index_state(fresh)
    assert updated.keys() == rebuilt.keys()
    for name in ("items.txt", "regions.npy", "global.npy", "stamps.npy", "lengths.npy"):
        assert updated[name] == rebuilt[name], name
    manifest = json.loads(updated["manifest.json"])
    assert [entry["path"] for entry in manifest["source"]["skipped"]] == ["broken.jpg"]

    again = run_main(retrieve.main, ["build", "--image_folder", album, "--index", index, "--update", *common])
    assert "up to date" in again.out
    assert _copy_index_state(index) == updated


def test_update_refuses_an_index_not_built_from_a_folder(built, tmp_path, tiny_precomp):
    captions = tmp_path / "caps.txt"
    captions.write_text("a red car\n")
    index = str(tmp_path / "caps_index")
    run_main(retrieve.main, ["build", "--model_path", built["model_path"], "--captions", str(captions),
                             "--index", index, "--no_progress"])
    run = run_main(retrieve.main, ["build", "--model_path", built["model_path"], "--image_folder", built["album"],
                                   "--index", index, "--update", "--no_progress"], expect=2)
    assert "not built from an image folder" in run.err


def test_a_moved_folder_still_answers_with_image_folder(built, tmp_path):
    moved = str(tmp_path / "moved")
    shutil.copytree(built["album"], moved)
    page = tmp_path / "page.html"
    run_main(retrieve.main, ["query", "--index", built["index"], "--query", QUERY, "--top_k", "3",
                             "--image_folder", moved, "--html", str(page)])
    assert page.read_text().count("data:image/jpeg;base64,") == 3


def test_scan_refuses_what_it_cannot_index(tmp_path):
    with pytest.raises(XDimError, match="is a file"):
        folders.scan_image_folder(str(write_photo(str(tmp_path / "x.png"), (0, 0, 0))))


def test_update_names_a_damaged_list_of_skipped_files(built, tmp_path):
    index = str(tmp_path / "index")
    shutil.copytree(built["index"], index)
    manifest_path = os.path.join(index, "manifest.json")
    manifest = json.loads(open(manifest_path).read())
    del manifest["source"]["skipped"][0]["mtime_ns"]
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    run = run_main(retrieve.main, ["build", "--model_path", built["model_path"], "--image_folder", built["album"],
                                   "--index", index, "--update", "--no_progress"], expect=2)
    assert "manifest.json: damaged, an entry of source.skipped" in run.err and "rebuild the index" in run.err
