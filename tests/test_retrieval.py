"""retrieve.py / lib.retrieval.index / lib.retrieval.shortlist: index build and queries against direct X-Dim scores,
two-stage recalls in eval.py, the distilled head, and one-line errors that damage nothing."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from builders import checkpoint_of, model_from_options
from butd_files import write_npz, write_tsv
from script_runs import run_main

import convert_features
import eval as eval_cli
import retrieve
from lib.cli.options import default_options
from lib.data.precomp import CaptionEncoder, open_split
from lib.errors import XDimError
from lib.formats.checkpoint import save_checkpoint, weights_fingerprint
from lib.model.bert import load_tokenizer
from lib.model.xdim_model import XDimModel
from lib.retrieval import index as retrieval
from lib.retrieval import shortlist

EMBED = 16
# Region and token embeddings are stored in float16: scores move by about this much.
FLOAT16_ATOL = 2e-2


def _checkpoint(folder, tiny_bert_dir, tiny_precomp, seed):
    """(path, model) of an untrained tiny X-Dim (random weights are enough to compare scores)."""
    data_path, data_name = tiny_precomp
    torch.manual_seed(seed)
    opt = default_options(embed_size=EMBED, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data_path, data_name=data_name, workers=0)
    model = model_from_options(opt)
    path = str(folder / f"model_{seed}.pth")
    save_checkpoint(checkpoint_of(model, opt), path)
    return path, XDimModel.from_checkpoint(path, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """Checkpoint, model, the test split and an image and a caption index built by the CLI."""
    folder = tmp_path_factory.mktemp("retrieval")
    path, model = _checkpoint(folder, tiny_bert_dir, tiny_precomp, seed=0)
    data_path, data_name = tiny_precomp
    split = open_split(data_path, data_name, "test")
    images_index, captions_index = str(folder / "images_index"), str(folder / "captions_index")
    run_main(retrieve.main, ["build", "--model_path", path, "--images", split.images_path,
                             "--index", images_index, "--no_progress"])
    run_main(retrieve.main, ["build", "--model_path", path, "--captions", split.captions_path,
                             "--index", captions_index, "--no_progress"])
    return {"folder": folder, "path": path, "model": model, "split": split,
            "images_index": images_index, "captions_index": captions_index}


def _direct_scores(model, split, captions):
    """float32 X-Dim scores (n_img, len(captions)) of the split's images, one forward_sim call."""
    encoder = CaptionEncoder(load_tokenizer(model.bert_path), 64)
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


def test_shortlist_is_the_faiss_top_k_of_global_vectors(setup):
    model, split = setup["model"], setup["split"]
    gallery = retrieval.GalleryIndex.open(setup["images_index"], model, shortlist.MeanPooling(EMBED))
    text = split.captions[7]
    hits = gallery.search_text(text, top_k=3, shortlist_size=3)
    encoder = CaptionEncoder(load_tokenizer(model.bert_path), 64)
    ids = torch.tensor([encoder.encode(text)])
    with torch.no_grad():
        img = model.encode_images(torch.from_numpy(np.array(split.images)))
        cap = model.encode_captions(ids)
    img_mean = img.double().mean(1)
    query = cap.double().mean(1)[0]
    cosine = (img_mean @ query) / (img_mean.norm(dim=1) * query.norm())
    assert sorted(h.index for h in hits) == sorted(torch.argsort(cosine, descending=True)[:3].tolist())
    for hit in hits:
        assert hit.global_score == pytest.approx(float(cosine[hit.index]), abs=1e-3)


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
    encoder = CaptionEncoder(load_tokenizer(model.bert_path), 64)
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


# ---------------------------------------------------------------- two-stage evaluation

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


def test_eval_shortlist_of_the_whole_gallery_equals_exhaustive(setup, tiny_precomp, tmp_path, capsys):
    data_path, data_name = tiny_precomp
    common = ["--model_path", setup["path"], "--data_path", data_path, "--data_name", data_name,
              "--device", "cpu", "--workers", "0", "--no_progress"]
    out = tmp_path / "all.json"
    printed = run_main(eval_cli.main, common + ["--split", "test", "--shortlist", "50", "--json", str(out)]).out
    results = json.load(open(out))
    assert results["shortlist"]["all"] == results["all"] and results["shortlist"]["pair_fraction"] == 1.0
    assert results["shortlist"]["k"] == 50 and results["shortlist"]["vectors"]["kind"] == "pooling"
    assert "shortlist 50 all" in printed and "100.00% of the pair scores" in printed
    # K = the image count: text-to-image is exhaustive, image-to-text sees 10 of 50 captions.
    run_main(eval_cli.main, common + ["--split", "test", "--shortlist", "10", "--json", str(out)])
    results = json.load(open(out))
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr"):
        assert results["shortlist"]["all"][key] == results["all"][key]
    # 5 folds of 2 images x 10 captions: K = 10 covers every fold in both directions.
    run_main(eval_cli.main, common + ["--split", "testall", "--fold5", "--fold_images", "2", "--shortlist", "10",
                                      "--json", str(out)])
    results = json.load(open(out))
    assert results["shortlist"]["folds"] == results["folds"]
    assert results["shortlist"]["fold_mean"] == results["fold_mean"]
    assert results["shortlist"]["fold_pair_fraction"] == 1.0
    assert eval_cli.main(["--ensemble", str(tmp_path / "x.npy"), "--shortlist", "5"]) == 2
    assert "--shortlist 5: needs K >= 1 and --model_path" in capsys.readouterr().err


# ---------------------------------------------------------------- the distilled head

def test_listwise_kl_matches_float64_reference():
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))

    def kl(s, t, axis):
        p = np.exp(t / 0.5) / np.exp(t / 0.5).sum(axis, keepdims=True)
        log_q = s - np.log(np.exp(s).sum(axis, keepdims=True))
        return (p * (np.log(p) - log_q)).sum() / t.shape[1 - axis]

    expected = kl(student, teacher, 1) + kl(student, teacher, 0)
    got = shortlist.listwise_kl(torch.tensor(student), torch.tensor(teacher), 0.5)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_mean_pooling_by_hand():
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]])
    pooled = shortlist.MeanPooling(2).images(emb, torch.tensor([2]))  # the third region is padding
    assert pooled[0].tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5])
    everything = shortlist.MeanPooling(2).captions(emb, torch.tensor([3]))
    assert everything[0].tolist() == pytest.approx([6 / 37 ** 0.5, 1 / 37 ** 0.5])


def test_neighbour_order_groups_nearest_images():
    # Three tight clusters of four images each, far apart: every group of 4 is one cluster.
    centres = torch.eye(3) * 10
    vectors = torch.cat([centres[k] + 0.01 * torch.randn(4, 3) for k in range(3)])
    cluster = np.repeat(np.arange(3), 4)
    order = shortlist.neighbour_order(vectors, 4, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(12))
    assert [len(set(cluster[order[i:i + 4]])) for i in range(0, 12, 4)] == [1, 1, 1]


def test_head_inner_product_is_scaled_cosine_plus_offsets():
    torch.manual_seed(0)
    head = shortlist.ShortlistHead(EMBED, size=8, hidden=4)
    img, cap, lens = torch.randn(3, 5, EMBED), torch.randn(4, 6, EMBED), torch.tensor([6, 2, 3, 1])
    img_vec, cap_vec = head.images(img), head.captions(cap, lens)
    assert img_vec.shape == (3, 10) and cap_vec.shape == (4, 10)
    u_img, b_img = head.image_pool(img, torch.ones(3, 5))
    u_cap, b_cap = head.caption_pool(cap, (torch.arange(6) < lens[:, None]).float())
    expected = head.log_scale.exp() * (u_img @ u_cap.t()) + b_img[:, None] + b_cap[None, :]
    torch.testing.assert_close(img_vec @ cap_vec.t(), expected)
    # padded tokens do not matter
    changed = cap.clone()
    changed[1, 2:] = 100.0
    torch.testing.assert_close(head.captions(changed, lens), cap_vec)


def test_distillation_learns_and_leaves_the_model_unchanged(setup, tiny_precomp, tmp_path):
    model = setup["model"]
    data_path, data_name = tiny_precomp
    split = open_split(data_path, data_name, "train")
    encoder = CaptionEncoder(load_tokenizer(model.bert_path), 64)
    before = weights_fingerprint(model.state_dict())

    def agreement_loss(head):
        with torch.no_grad():
            img, cap, lens = shortlist._encode_batch(model, split, encoder, np.arange(32))
            student = head.images(img) @ head.captions(cap, lens).t()
            return float(shortlist.listwise_kl(student, model.forward_sim(img, cap, lens), 0.05))

    torch.manual_seed(0)
    untrained = agreement_loss(shortlist.ShortlistHead(EMBED, 32, 16))
    head, _ = shortlist.distill_head(model, split, encoder, epochs=15, batch_images=16, lr=1e-2, size=32,
                                     progress=False)
    assert agreement_loss(head) < 0.7 * untrained
    assert weights_fingerprint(model.state_dict()) == before
    path = str(tmp_path / "h.shortlist.pth")
    shortlist.save_head(head, path, before, {"note": "test"})
    loaded = shortlist.load_head(path, before)
    emb = torch.randn(3, 36, EMBED)
    assert torch.equal(loaded.images(emb), head.images(emb))
    with pytest.raises(XDimError, match="distilled from other weights"):
        shortlist.load_head(path, "0" * 64)
    saved = torch.load(path, weights_only=True)
    del saved["state"]["image_pool.offset.weight"]
    torch.save(saved, path)
    with pytest.raises(XDimError, match=r"h\.shortlist\.pth: damaged, or written by another version of the head"):
        shortlist.load_head(path, before)


def test_distill_cli_head_is_used_by_eval_and_build(setup, tiny_precomp, tmp_path, capsys):
    data_path, data_name = tiny_precomp
    path = str(tmp_path / "model.pth")
    shutil.copy(setup["path"], path)
    run_main(retrieve.main, ["distill", "--model_path", path, "--epochs", "1", "--batch_images", "16",
                             "--size", "8"])
    assert os.path.isfile(str(tmp_path / "model.shortlist.pth"))
    out = tmp_path / "r.json"
    run_main(eval_cli.main, ["--model_path", path, "--data_path", data_path, "--data_name", data_name,
                             "--workers", "0", "--no_progress", "--shortlist", "3", "--json", str(out)])
    vectors = json.load(open(out))["shortlist"]["vectors"]
    assert vectors["kind"] == "head" and vectors["size"] == 10  # 8 + the two offset coordinates
    index = str(tmp_path / "idx")
    run_main(retrieve.main, ["build", "--model_path", path, "--images", setup["split"].images_path,
                             "--index", index, "--no_progress"])
    manifest = json.load(open(os.path.join(index, "manifest.json")))
    assert manifest["global"] == vectors
    os.remove(tmp_path / "model.shortlist.pth")  # the index's vectors came from the head: now stale
    capsys.readouterr()
    assert retrieve.main(["query", "--index", index, "--query", "a dog"]) == 2
    assert "stale index, its global vectors come from" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input

def _folder_state(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _query_error(argv, capsys):
    capsys.readouterr()
    code = retrieve.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


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


def test_query_errors(setup, capsys, tmp_path):
    index, caps = setup["images_index"], setup["captions_index"]
    assert "empty query" in _query_error(["query", "--index", index, "--query", "   "], capsys)
    assert "out of range" in _query_error(["query", "--index", caps, "--image_index", "10"], capsys)
    assert "an image gallery cannot answer image queries" in _query_error(
        ["query", "--index", index, "--image_index", "0"], capsys)
    assert "a caption gallery cannot answer text queries" in _query_error(
        ["query", "--index", caps, "--query", "a dog"], capsys)
    assert "no such index folder" in _query_error(["query", "--index", str(tmp_path / "x"), "--query", "a"],
                                                  capsys)
    empty_line = tmp_path / "q.txt"
    empty_line.write_text("a dog\n\na cat\n", encoding="utf-8")
    assert "q.txt: line 2 is empty" in _query_error(["query", "--index", index, "--queries", str(empty_line)],
                                                    capsys)
    assert "--json /nowhere/x.json: folder /nowhere does not exist" in _query_error(
        ["query", "--index", index, "--query", "a dog", "--json", "/nowhere/x.json"], capsys)
    manifest = json.load(open(os.path.join(index, "manifest.json")))
    broken = tmp_path / "broken"
    shutil.copytree(index, broken)
    json.dump(dict(manifest, model="not a dict"), open(broken / "manifest.json", "w"))
    assert "manifest.json: damaged, field 'model' is str, expected dict; rebuild the index" in _query_error(
        ["query", "--index", str(broken), "--query", "a dog"], capsys)


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


def test_missing_faiss_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(XDimError, match=r"^FAISS is not installed: pip install faiss-cpu$"):
        retrieval.exact_shortlist(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), 1)
