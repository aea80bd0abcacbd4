"""lib/retrieval/index.py and retrieve.py: build, query, two-stage protocol (its floor and fold pair fraction), refusals and atomic writes."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import (
    EMBED,
    _checkpoint,
    _query_error,
    dead_pid,
    folder_state,
    one_caption_scores,
    one_error_line,
    reference_fold_metrics,
    run_main,
    write_npz,
    write_tsv,
)

import convert_features
import retrieve
from lib.data.precomp import CaptionTokenizer
from lib.errors import XDimError
from lib.model.bert import load_tokenizer
from lib.model.xdim_model import XDimModel
from lib.retrieval import index as retrieval
from lib.retrieval import shortlist
from lib.retrieval.index import two_stage_protocol


def test_fold5_shortlist_with_one_caption_per_image():
    # catches: two_stage_protocol's fold_slices without captions_per_image.
    sims = one_caption_scores()
    one_hot = np.eye(60, dtype=np.float32)  # each item's global vector finds its own pair first
    results = two_stage_protocol(sims, one_hot, one_hot, 1, captions_per_image=1, fold5=True, fold_images=12)
    assert len(results["folds"]) == 5
    for fold in results["folds"]:
        assert fold["i2t_r1"] == fold["t2i_r1"] == 100.0
    # Shortlisting a whole fold changes nothing: the folds of the one-stage protocol.
    whole = two_stage_protocol(sims, one_hot, one_hot, 12, captions_per_image=1, fold5=True, fold_images=12)
    for k, fold in enumerate(whole["folds"]):
        for key, value in reference_fold_metrics(sims[12 * k:12 * k + 12, 12 * k:12 * k + 12]).items():
            assert fold[key] == pytest.approx(value, abs=1e-9), (k, key)


# Region and token embeddings are stored in float16: scores move by about this much.
FLOAT16_ATOL = 2e-2


def _direct_scores(model, split, captions):
    """float32 X-Dim scores (n_img, len(captions)) of the split's images, one forward_sim call."""
    encoder = CaptionTokenizer(load_tokenizer(model.bert_path), 64)
    ids = [torch.tensor(encoder.encode(c)) for c in captions]
    lens = torch.tensor([len(i) for i in ids])
    with torch.no_grad():
        img = model.encode_images(torch.from_numpy(np.array(split.images)))
        cap = model.encode_captions(torch.nn.utils.rnn.pad_sequence(ids, batch_first=True), lens)
        return model.forward_sim(img, cap, lens).numpy()


def _check_hits(hits, reference, top_k):
    """Hits carry the reference scores (float16 storage) and are the reference's top_k (up to that noise)."""
    assert [h.rank for h in hits] == list(range(1, top_k + 1))
    scores = np.array([h.score for h in hits])
    assert np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, reference[[h.index for h in hits]], atol=FLOAT16_ATOL, rtol=0)
    kth_best = np.sort(reference)[::-1][top_k - 1]
    assert reference[[h.index for h in hits]].min() >= kth_best - 2 * FLOAT16_ATOL


def test_text_query_json_matches_direct_scores(setup, capsys, tmp_path):
    query, out = "a red dog and a cat", tmp_path / "hits.json"
    code = retrieve.main(["query", "--index", setup["images_index"], "--query", query, "--top_k", "4",
                          "--shortlist", "10", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "top 4 of 10 images (X-Dim on 10 shortlisted" in printed
    (result,) = json.load(open(out))
    hits = [retrieval.Hit(**h) for h in result["hits"]]
    assert result["query"] == query
    reference = _direct_scores(setup["model"], setup["split"], [query])[:, 0]
    _check_hits(hits, reference, 4)
    assert [h.item for h in hits] == [str(h.index) for h in hits]  # no ids file: rows are the ids


def test_image_query_over_caption_gallery_matches_direct_scores(setup):
    model, split = setup["model"], setup["split"]
    gallery = retrieval.GalleryIndex.open(setup["captions_index"], model,
                                          shortlist.MeanPooling(EMBED))
    hits = gallery.search_image(split.images[3], None, top_k=6, shortlist_size=50)
    reference = _direct_scores(model, split, split.captions)[3]
    _check_hits(hits, reference, 6)
    assert [h.item for h in hits] == [split.captions[h.index] for h in hits]


@pytest.mark.parametrize("source", ["tsv", "npz"])
def test_converted_features_end_to_end(setup, tmp_path, capsys, source):
    """Extractor output -> convert_features.py -> build -> query: padded regions are masked in
    stage two, ids come from the extractor, image queries are found by id."""
    model, split = setup["model"], setup["split"]
    rng = np.random.default_rng(0)
    counts = [36, 20, 5, 40]  # 40 boxes: the first 36 are kept
    records = []
    for row, (image_id, count) in enumerate(zip("abcd", counts)):
        feats = np.concatenate([split.images[row], rng.standard_normal((4, 32)).astype(np.float32)])[:count]
        records.append((image_id, 640, 480, np.zeros((count, 4), np.float32), feats))
    folder = tmp_path / "conv"
    if source == "tsv":
        inputs = ["--tsv", write_tsv(tmp_path / "f.tsv", records)]
    else:
        for record in records:
            write_npz(tmp_path / "npz", record)
        inputs = ["--npz_dir", str(tmp_path / "npz")]
    run_main(convert_features.main, inputs + ["--out", str(folder), "--split", "g", "--no_progress"])
    images = np.zeros((4, 36, 32), np.float32)  # what the conversion must have produced, by hand
    real = np.minimum(counts, 36)
    for row, count in enumerate(real):
        images[row, :count] = split.images[row][:count]
    index = str(tmp_path / "idx")
    run_main(retrieve.main, ["build", "--model_path", setup["path"], "--images", str(folder / "g_ims.npy"),
                             "--index", index, "--no_progress"])
    capsys.readouterr()
    query = split.captions[0]
    run_main(retrieve.main, ["query", "--index", index, "--query", query, "--top_k", "4",
                             "--json", str(tmp_path / "hits.json")])
    hits = [retrieval.Hit(**h) for h in json.load(open(tmp_path / "hits.json"))[0]["hits"]]
    encoder = CaptionTokenizer(load_tokenizer(model.bert_path), 64)
    ids = torch.tensor([encoder.encode(query)])
    with torch.no_grad():
        img = model.encode_images(torch.from_numpy(images))
        masked = model.forward_sim(img, model.encode_captions(ids), torch.tensor([ids.shape[1]]),
                                   torch.from_numpy(real))[:, 0].numpy()
    np.testing.assert_allclose([h.score for h in hits], masked[[h.index for h in hits]], atol=FLOAT16_ATOL)
    assert {(h.index, h.item) for h in hits} == {(0, "a"), (1, "b"), (2, "c"), (3, "d")}
    (folder / "g_caps.txt").write_text("\n".join(split.captions[:20]) + "\n", encoding="utf-8")
    captions_index = str(tmp_path / "caps_idx")
    run_main(retrieve.main, ["build", "--model_path", setup["path"], "--captions", str(folder / "g_caps.txt"),
                             "--index", captions_index, "--no_progress"])
    capsys.readouterr()
    assert "image c (row 2 of" in run_main(retrieve.main, ["query", "--index", captions_index, "--image_id", "c",
                                                          "--top_k", "2"]).out
    code = retrieve.main(["query", "--index", captions_index, "--image_id", "zzz"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: --image_id zzz: unknown id (not in the ids of {folder / 'g_ims.npy'})\n"


def test_hnsw_index_finds_the_same_items_on_a_small_gallery(setup, tmp_path):
    index = str(tmp_path / "hnsw")
    run_main(retrieve.main, ["build", "--model_path", setup["path"], "--images", setup["split"].images_path,
                             "--index", index, "--index_type", "hnsw", "--no_progress"])
    assert json.load(open(os.path.join(index, "manifest.json")))["index_type"] == "hnsw"
    model = setup["model"]
    hnsw = retrieval.GalleryIndex.open(index, model, shortlist.MeanPooling(EMBED))
    flat = retrieval.GalleryIndex.open(setup["images_index"], model, shortlist.MeanPooling(EMBED))
    for text in setup["split"].captions[:5]:
        assert [h.index for h in hnsw.search_text(text, 3, 5)] == [h.index for h in flat.search_text(text, 3, 5)]
    assert retrieval.choose_index_type(retrieval.APPROXIMATE_FROM - 1) == "flat"
    assert retrieval.choose_index_type(retrieval.APPROXIMATE_FROM) == "hnsw"


def test_row_reader_reads_rows_and_spans(tmp_path):
    array = np.arange(5 * 3 * 2, dtype=np.float16).reshape(5, 3, 2)
    np.save(tmp_path / "a.npy", array)
    reader = retrieval.RowReader(str(tmp_path / "a.npy"), np.load(tmp_path / "a.npy", mmap_mode="r"))
    np.testing.assert_array_equal(reader.rows([3, 0, 3]), array[[3, 0, 3]])
    np.testing.assert_array_equal(reader.span(1, 4), array[1:4])
    with open(tmp_path / "a.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "a.npy") - 1)
    with pytest.raises(XDimError, match=r"a\.npy: damaged: ends before row 4; rebuild the index"):
        reader.rows([4])
    reader.close()


def test_two_stage_metrics_by_hand():
    sims = np.array([[5, 1, 0], [4, 3, 0], [0, 2, 1]], dtype=np.float32)
    img_global = np.eye(3, dtype=np.float32)
    cap_global = np.array([[0.1, 0.9, 0], [0.2, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    # K = 1. Captions shortlist images 1, 1, 2: caption 0 loses its image (rank 2 = last).
    # Images shortlist captions 1, 0, 2: images 0 and 1 lose theirs.
    values, fraction = retrieval.two_stage_metrics(sims, img_global, cap_global, 1, captions_per_image=1)
    assert values["t2i_r1"] == pytest.approx(200 / 3) and values["t2i_r5"] == 100.0
    assert values["t2i_meanr"] == pytest.approx(5 / 3) and values["t2i_medr"] == 1.0
    assert values["i2t_r1"] == pytest.approx(100 / 3) and values["i2t_meanr"] == pytest.approx(7 / 3)
    assert values["rsum"] == pytest.approx(200 / 3 + 200 + 100 / 3 + 200)
    assert fraction == pytest.approx(4 / 9)  # pairs (1,0) (1,1) (2,2) and (0,1)
    values, fraction = retrieval.two_stage_metrics(sims, img_global, cap_global, 2, captions_per_image=1)
    assert values["t2i_r1"] == 100.0  # caption 0 now sees images 1 and 0, and X-Dim prefers 0 (5 > 4)
    # A shortlisted true pair holding the matrix minimum still ranks above the unlisted pairs, which
    # lie below it (catches: their floor equal to sims.min(): (0, 0) would tie with them and rank last).
    sims = np.array([[0, 5, 6], [4, 3, 1], [2, 1, 7]], dtype=np.float32)
    identity = np.eye(3, dtype=np.float32)  # every query shortlists exactly its own match
    values, fraction = retrieval.two_stage_metrics(sims, identity, identity, 1, captions_per_image=1)
    for direction in ("i2t", "t2i"):
        assert values[f"{direction}_r1"] == 100.0 and values[f"{direction}_meanr"] == 1.0
    assert fraction == pytest.approx(3 / 9)


# Global vectors of one fold of 2 images and 2 captions (one caption per image), K = 1.
# Matched: each caption's best image is its own and each image's best caption is its own,
# so both directions need the pairs (0, 0) and (1, 1): 2 of 4 pairs.
MATCHED = (np.eye(2), np.eye(2))
# Leaning: both captions prefer image 0 (1 > 0 and 0.9 > 0.1), image 0 prefers caption 0 and
# image 1 caption 1: the pairs (0, 0), (0, 1), (1, 1), 3 of 4.
LEANING = (np.eye(2), np.array([[1.0, 0.0], [0.9, 0.1]]))


def test_fold_pair_fraction_is_the_mean_over_folds_that_differ():
    # catches: fold_pair_fraction = the last (or first) fold's fraction instead of their mean.
    folds = [LEANING, MATCHED, LEANING, MATCHED, MATCHED]
    img_global = np.concatenate([f[0] for f in folds]).astype(np.float32)
    cap_global = np.concatenate([f[1] for f in folds]).astype(np.float32)
    sims = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    results = retrieval.two_stage_protocol(sims, img_global, cap_global, 1, captions_per_image=1, fold5=True, fold_images=2)
    assert results["fold_pair_fraction"] == pytest.approx((0.75 + 0.5 + 0.75 + 0.5 + 0.5) / 5)


def _folder_state(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_stale_index_from_another_checkpoint(setup, tiny_bert_dir, tiny_precomp, tmp_path, capsys):
    other, _ = _checkpoint(tmp_path, tiny_bert_dir, tiny_precomp, seed=1)
    err = _query_error(["query", "--index", setup["images_index"], "--model_path", other, "--query", "a dog"],
                       capsys)
    assert "stale index, built with other weights" in err and "rebuild it with retrieve.py build" in err


@pytest.mark.parametrize("damage, message", [
    ("truncate regions.npy", "regions.npy: damaged or missing"),
    ("reshape global.npy", "global.npy: damaged: holds float32 (5, 16)"),
    ("garble faiss.index", "faiss.index: damaged"),
    ("garble manifest.json", "manifest.json: damaged"),
    ("drop a line of items.txt", "items.txt: damaged: 9 lines for 10 items"),
])
def test_damaged_index_is_reported(setup, tmp_path, capsys, damage, message):
    index = str(tmp_path / "idx")
    shutil.copytree(setup["images_index"], index)
    if damage.startswith("truncate"):
        with open(os.path.join(index, "regions.npy"), "r+b") as f:
            f.truncate(1000)
    elif damage.startswith("reshape"):
        np.save(os.path.join(index, "global.npy"), np.zeros((5, EMBED), np.float32))
    elif damage.startswith("garble"):
        with open(os.path.join(index, damage.split()[1]), "wb") as f:
            f.write(b"\x00garbage")
    else:
        lines = open(os.path.join(index, "items.txt")).read().splitlines()
        open(os.path.join(index, "items.txt"), "w").write("\n".join(lines[:-1]) + "\n")
    err = _query_error(["query", "--index", index, "--model_path", setup["path"], "--query", "a dog"], capsys)
    assert message in err


def test_build_errors_leave_existing_index_untouched(setup, tmp_path, capsys):
    index = str(tmp_path / "idx")
    shutil.copytree(setup["images_index"], index)
    before = _folder_state(index)
    wrong_size = tmp_path / "wrong_ims.npy"
    np.save(wrong_size, np.zeros((3, 36, 31), np.float32))
    err = _query_error(["build", "--model_path", setup["path"], "--images", str(wrong_size), "--index", index,
                        "--overwrite", "--no_progress"], capsys)
    assert err == f"error: {wrong_size}: region features have size 31, but the checkpoint expects 32\n"
    err = _query_error(["build", "--model_path", setup["path"], "--images", setup["split"].images_path,
                        "--index", index, "--no_progress"], capsys)
    assert "already exists (pass --overwrite" in err
    assert _folder_state(index) == before
    assert sorted(os.listdir(tmp_path)) == ["idx", "wrong_ims.npy"]  # no staging folder left behind


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make any checkpoint load fail the test: a refusal must come before any work."""

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
