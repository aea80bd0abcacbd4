"""--protocols: COCO 5K under CxC, ECCV Caption and PMRP through eccv_caption (installed by
requirements-tests.txt).

Rankings are built over the package's real ids and their metrics compared with values
derived by hand; the ranking code is compared with a plain sort on small matrices; one
test scores a full 5000 x 25000 matrix (500 MB) through eval.py, for the cross-check.
"""
import json
import os

import numpy as np
import pytest

import eval as eval_cli
from lib.errors import XDimError
from lib.evaluation import metrics, protocols


@pytest.fixture(scope="module")
def package():
    return protocols.load_package()


@pytest.fixture(scope="module")
def split_ids(package):
    """(image ids (5000,), caption ids (25000,)) of the Karpathy 5K test split, in its order."""
    return protocols.package_image_order(package), np.asarray(package.coco_ids, dtype=np.int64)


def run(argv, capsys):
    code = eval_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- ranked lists

def reference_top(scores, length, positives):
    """Plain sort of every item by (score descending, COCO positive last, index)."""
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j in set(positives), j))
    return order[:length]


def test_ranked_lists_match_a_plain_sort_with_ties_against_the_ground_truth():
    rng = np.random.default_rng(0)
    sims = rng.integers(0, 4, size=(6, 30)).astype(np.float32)  # four levels: many ties
    i2t_lengths, t2i_lengths = rng.integers(1, 31, size=6), rng.integers(1, 7, size=30)
    i2t, t2i = protocols.ranked_lists(sims, i2t_lengths, t2i_lengths, captions_per_image=5,
                                      rows_per_chunk=4, cols_per_chunk=4)
    for i in range(6):
        assert i2t[i].tolist() == reference_top(sims[i], i2t_lengths[i], range(5 * i, 5 * i + 5))
    for c in range(30):
        assert t2i[c].tolist() == reference_top(sims[:, c], t2i_lengths[c], [c // 5])


def test_first_true_item_of_a_full_list_is_the_rank_our_metrics_count():
    rng = np.random.default_rng(1)
    sims = np.round(rng.random((8, 40)), 1).astype(np.float32)
    i2t, t2i = protocols.ranked_lists(sims, np.full(8, 40), np.full(40, 8), captions_per_image=5)
    first_true_i2t = [next(k for k, c in enumerate(items) if c // 5 == i) for i, items in enumerate(i2t)]
    first_true_t2i = [items.tolist().index(c // 5) for c, items in enumerate(t2i)]
    assert first_true_i2t == metrics.i2t_ranks(sims, 5).tolist()
    assert first_true_t2i == metrics.t2i_ranks(sims, 5).tolist()


def test_lists_go_as_deep_as_the_largest_ground_truth_of_a_query():
    truths = [{7: [1, 2]}, {7: list(range(14)), 9: [3]}]
    assert protocols.list_lengths(truths, np.array([7, 9, 11])).tolist() == [14, 10, 10]


# ---------------------------------------------------------------- metrics from constructed rankings

def ranking(truth, items, wrong_first=False):
    """For each query of `truth`: its ground-truth items that the split holds first, then the
    split's first other items (a list at least 60 long), optionally behind one wrong item."""
    item_set, head = set(items.tolist()), items[:100].tolist()
    lists = {}
    for query, positives in truth.items():
        rest = [x for x in head if x not in set(positives)]
        found = [x for x in positives if x in item_set]
        lists[query] = (rest[:1] if wrong_first else []) + found + rest[1 if wrong_first else 0:60]
    return lists


def lists_for(package, name, split_ids, wrong_first=False):
    images, captions = split_ids
    truth = getattr(package, protocols.GROUND_TRUTHS[name])
    return {"i2t": ranking(truth["i2t"], captions, wrong_first), "t2i": ranking(truth["t2i"], images, wrong_first)}


def test_ground_truth_first_gets_each_metric_maximum(package, split_ids):
    coco = protocols.package_results(package, ["coco_5k"], lists_for(package, "coco", split_ids))["coco_5k"]
    cxc = protocols.package_results(package, ["cxc"], lists_for(package, "cxc", split_ids))["cxc"]
    eccv = protocols.package_results(package, ["eccv"], lists_for(package, "eccv", split_ids))["eccv"]
    assert set(coco.values()) == {100.0}
    assert set(cxc.values()) == {100.0}
    assert {eccv[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)} == {100.0}
    assert eccv["t2i_rprecision"] == pytest.approx(100.0) and eccv["t2i_map_at_r"] == pytest.approx(100.0)
    # Two images' ECCV positives each hold one caption that is not among the 25000 test captions:
    # at best m = R - 1 of their R positives come first, so R-P = mAP@R = (R - 1) / R for them.
    sizes = [len(package.eccv_gts["i2t"][image]) for image in (575916, 421999)]
    best = 100.0 * (len(package.eccv_gts["i2t"]) - 2 + sum((r - 1) / r for r in sizes)) / len(package.eccv_gts["i2t"])
    assert best < 100.0
    assert eccv["i2t_rprecision"] == pytest.approx(best) and eccv["i2t_map_at_r"] == pytest.approx(best)


def test_one_wrong_item_first_gives_the_known_values(package, split_ids):
    eccv = protocols.package_results(package, ["eccv"], lists_for(package, "eccv", split_ids, True))["eccv"]
    coco = protocols.package_results(package, ["coco_5k"], lists_for(package, "coco", split_ids, True))["coco_5k"]
    assert coco == {"i2t_r1": 0.0, "i2t_r5": 100.0, "i2t_r10": 100.0, "t2i_r1": 0.0, "t2i_r5": 100.0, "t2i_r10": 100.0}
    assert eccv["t2i_r1"] == 0.0 and eccv["i2t_r1"] == 0.0
    # A query with R positives ranked 2 .. R+1: its top R holds R - 1 of them (R-P = (R-1)/R) and
    # the hit at position r (2 <= r <= R) has precision (r-1)/r, so mAP@R = sum((r-1)/r) / R.
    sizes = np.array([len(v) for v in package.eccv_gts["t2i"].values()], dtype=np.float64)
    rprecision = 100.0 * np.mean((sizes - 1) / sizes)
    map_at_r = 100.0 * np.mean([sum((r - 1) / r for r in range(2, int(size) + 1)) / size for size in sizes])
    assert eccv["t2i_rprecision"] == pytest.approx(rprecision, abs=1e-9)
    assert eccv["t2i_map_at_r"] == pytest.approx(map_at_r, abs=1e-9)


def test_pmrp_from_plausible_match_files(tmp_path, split_ids):
    images, captions = split_ids
    image, caption = int(images[0]), int(captions[7])
    (tmp_path / "pm_image_to_caption.json").write_text(json.dumps({str(image): captions[:4].tolist()}))
    (tmp_path / "pm_caption_to_image.json").write_text(json.dumps({str(caption): images[1:3].tolist()}))
    package = protocols.load_package(str(tmp_path))
    # image: 2 of its 4 plausible captions in its top 4 -> 50; caption: 1 of its 2 images in its top 2 -> 50
    lists = {"i2t": {image: [captions[0], captions[9], captions[1], captions[8]]},
             "t2i": {caption: [images[2], images[0], images[1]]}}
    lists = {d: {q: [int(x) for x in items] for q, items in lists[d].items()} for d in lists}
    assert protocols.package_results(package, ["pmrp"], lists)["pmrp"] == {"i2t_rprecision": 50.0,
                                                                           "t2i_rprecision": 50.0}


# ---------------------------------------------------------------- the ids check

def write_ids(path, ids, per_caption=False):
    path.write_text("".join(f"{i}\n" for i in (np.repeat(ids, 5) if per_caption else ids)))
    return str(path)


@pytest.mark.parametrize("per_caption", [False, True])
def test_ids_of_the_karpathy_split_in_order_pass(tmp_path, package, split_ids, per_caption):
    path = write_ids(tmp_path / "testall_ids.txt", split_ids[0], per_caption)
    ids = protocols.read_image_ids(path, 5000)
    assert ids.tolist() == split_ids[0].tolist()
    protocols.check_split_ids(ids, package, path)


def test_a_shuffled_split_is_refused(package, split_ids):
    ids = split_ids[0].copy()
    ids[[10, 20]] = ids[[20, 10]]
    with pytest.raises(XDimError, match=r"^ids\.txt: the 5K test images in another order \(2 of 5000 moved; "
                                        rf"image 10 is id {ids[10]}, the Karpathy order has {ids[20]}\)"):
        protocols.check_split_ids(ids, package, "ids.txt")


def test_a_split_of_other_images_is_refused(package, split_ids):
    ids = split_ids[0].copy()
    ids[3] = 9  # COCO train2014 image 9: not a 5K test image
    with pytest.raises(XDimError, match=r"^ids\.txt: 1 of the 5000 images are not COCO 5K test images "
                                        r"\(first: image 3, id 9\)"):
        protocols.check_split_ids(ids, package, "ids.txt")
    ids[3] = ids[4]
    with pytest.raises(XDimError, match=rf"image id {ids[4]} appears 2 times"):
        protocols.check_split_ids(ids, package, "ids.txt")
    with pytest.raises(XDimError, match=r"^ids\.txt: 1000 image ids; COCO's 5K test split has 5000$"):
        protocols.check_split_ids(ids[:1000], package, "ids.txt")


def test_the_ids_file_lies_beside_the_features_or_in_the_data_folder(tmp_path):
    assert protocols.ids_file(str(tmp_path / "coco_precomp" / "testall_ims.npy")) == str(
        tmp_path / "coco_precomp" / "testall_ids.txt")
    assert protocols.ids_file(None, "DATA", "coco_precomp", "testall") == os.path.join("DATA", "coco_precomp",
                                                                                       "testall_ids.txt")
    assert protocols.ids_file(None, None, "coco_precomp", "testall") is None


def test_score_files_without_a_data_folder_are_refused_before_reading_ids():
    with pytest.raises(XDimError, match=r"^--protocols needs the split's COCO image ids: give --data_path"):
        protocols.prepare(("eccv",), None, (5000, 25000), None)


def test_plausible_match_queries_outside_the_split_are_refused(split_ids):
    truths = {"coco": {"i2t": {int(split_ids[0][0]): []}, "t2i": {}},
              "pmrp": {"i2t": {}, "t2i": {12: [], 13: [], int(split_ids[1][0]): []}}}
    with pytest.raises(XDimError, match=r"^--protocols pmrp: 2 t2i queries are not in COCO's 5K test split "
                                        r"\(first: id 12\)$"):
        protocols.check_queries(truths, *split_ids)


def test_unreadable_ids_files_are_refused_naming_the_line(tmp_path, split_ids):
    path = write_ids(tmp_path / "a.txt", split_ids[0], per_caption=True)
    lines = (tmp_path / "a.txt").read_text().splitlines()
    lines[7] = "123"
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(XDimError, match=r"a\.txt: lines 6-10 name different images"):
        protocols.read_image_ids(path, 5000)
    lines[7] = "COCO_val2014_000000391895.jpg"
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(XDimError, match=r"a\.txt: line 8 is 'COCO_val2014_000000391895.jpg', not a COCO image id"):
        protocols.read_image_ids(path, 5000)
    with pytest.raises(XDimError, match=r"a\.txt: 4999 ids for the 5000 images"):
        protocols.read_image_ids(write_ids(tmp_path / "a.txt", split_ids[0][1:]), 5000)
    with pytest.raises(XDimError, match=r"no such file; --protocols reads the split's COCO image ids"):
        protocols.read_image_ids(str(tmp_path / "missing.txt"), 5000)


# ---------------------------------------------------------------- the cross-check

def test_cross_check_refuses_any_disagreement():
    ours = {"i2t_r1": 50.0, "t2i_r1": 20.0}
    protocols.cross_check({"i2t_r1": 50.0, "t2i_r1": 20.0}, ours, "COCO 5K")
    with pytest.raises(XDimError, match=r"eccv_caption's COCO 5K t2i_r1 is 20\.0040, this codebase's is 20\.0000"):
        protocols.cross_check({"i2t_r1": 50.0, "t2i_r1": 20.004}, ours, "COCO 5K")


def test_benchmarks_are_refused_when_the_package_disagrees_with_our_metrics(monkeypatch, package, split_ids):
    """The lists handed to the package are wrong on purpose (every query ranks the split's first
    items): its COCO 5K R@K then differ from ours, and nothing is reported."""
    def first_items(sims, i2t_lengths, t2i_lengths, **kwargs):
        return ([np.arange(n) for n in i2t_lengths], [np.arange(n) for n in t2i_lengths])
    monkeypatch.setattr(protocols, "ranked_lists", first_items)
    ours = {"all": {f"{d}_r{k}": 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}}
    with pytest.raises(XDimError, match=r"^--protocols: eccv_caption's COCO 5K i2t_r1 is 0\.0200, this codebase's "
                                        r"is 100\.0000 on the same scores"):
        protocols.benchmark_results(None, split_ids[0], package, ("coco", "eccv"), ours)


@pytest.fixture(scope="module")
def coco_5k_files(tmp_path_factory, split_ids):
    """A 5000 x 25000 float32 score file (500 MB on disk while the module runs, not kept in memory) and a data folder
    holding coco_precomp/testall_ids.txt in the precomp release's layout (one line per caption).

    Scores: uniform noise rounded to 0.001 (so ties occur); each image's true captions
    gain 0.6 for images 3n+1 and 3n+2 only, so every recall lies strictly between 0 and 100.
    """
    folder = tmp_path_factory.mktemp("coco5k")
    rng = np.random.default_rng(0)
    sims = rng.random((5000, 25000), dtype=np.float32)
    np.round(sims, 3, out=sims)
    captions = np.arange(25000)
    boosted = captions[(captions // 5) % 3 != 0]
    sims[boosted // 5, boosted] += 0.6
    np.save(folder / "coco_a.npy", sims)
    del sims
    (folder / "data" / "coco_precomp").mkdir(parents=True)
    write_ids(folder / "data" / "coco_precomp" / "testall_ids.txt", split_ids[0], per_caption=True)
    yield folder
    (folder / "coco_a.npy").unlink()  # pytest keeps recent temporary folders: not 500 MB of them


def test_testall_protocols_on_a_saved_5k_score_file_cross_checked(coco_5k_files, capsys):
    """The one full-size test: a saved 5K score matrix re-evaluated with eval.py's testall
    defaults. The package's COCO 1K / 5K R@K, from the same ranked lists, equal ours."""
    json_path = coco_5k_files / "a.json"
    code, out, err = run(["--ensemble", str(coco_5k_files / "coco_a.npy"), "--data_name", "coco_precomp",
                          "--split", "testall", "--fold5", "--data_path", str(coco_5k_files / "data"),
                          "--protocols", "coco,cxc,eccv", "--json", str(json_path), "--no_progress"], capsys)
    assert code == 0, err
    results = json.loads(json_path.read_text())
    ours = {key: value for key, value in results["all"].items() if key.endswith(("_r1", "_r5", "_r10"))}
    assert 0 < ours["i2t_r1"] < 100 and 0 < ours["t2i_r1"] < 100
    assert results["protocols"]["coco_5k"] == ours
    assert results["protocols"]["coco_1k"] == {key: results["fold_mean"][key] for key in ours}
    assert set(results["protocols"]["eccv"]) == {f"{d}_{m}" for d in ("i2t", "t2i")
                                                 for m in ("r1", "r5", "r10", "rprecision", "map_at_r")}
    assert results["protocols"]["queries"]["eccv"] == {"i2t": 1261, "t2i": 1332}
    assert all(0 < value < 100 for value in results["protocols"]["eccv"].values())
    table = out.split("benchmarks on COCO 5K (ids checked: ")[1].splitlines()
    assert [line.split(" |")[0].strip() for line in table[4:]] == ["COCO 1K (5-fold mean)", "COCO 5K", "CxC",
                                                                   "ECCV Caption"]
    eccv_row = table[-1].split("|")
    assert eccv_row[1].split() == [f"{results['protocols']['eccv'][f'i2t_{m}']:.1f}"
                                   for m in ("r1", "r5", "r10", "rprecision", "map_at_r")]
    assert table[5].split("|")[1].split() == [f"{ours[f'i2t_r{k}']:.1f}" for k in (1, 5, 10)] + ["-", "-"]


def test_a_shuffled_ids_file_stops_eval_before_scoring(coco_5k_files, tmp_path, split_ids, capsys):
    data = tmp_path / "data" / "coco_precomp"
    data.mkdir(parents=True)
    ids = split_ids[0].copy()
    ids[[0, 1]] = ids[[1, 0]]
    write_ids(data / "testall_ids.txt", ids, per_caption=True)
    code, out, err = run(["--ensemble", str(coco_5k_files / "coco_a.npy"), "--data_name", "coco_precomp",
                          "--split", "testall", "--data_path", str(tmp_path / "data"), "--protocols", "eccv",
                          "--json", str(tmp_path / "a.json")], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"error: {data / 'testall_ids.txt'}: the 5K test images in another order "
                                f"(2 of 5000 moved; image 0 is id {ids[0]}, the Karpathy order has {ids[1]}): "
                                f"the scores must follow the Karpathy 5K order"]
    assert not (tmp_path / "a.json").exists()


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("extra, message", [
    (["--protocols", "coco,eccx"], "--protocols coco,eccx: unknown eccx; choose from coco,cxc,eccv,pmrp"),
    (["--protocols", "pmrp"], "--protocols pmrp and --pm_dir go together"),
    (["--pm_dir", "."], "--protocols pmrp and --pm_dir go together"),
    (["--protocols", "pmrp", "--pm_dir", "."], "--pm_dir .: no pm_image_to_caption.json there"),
    (["--protocols", "coco", "--fold_images", "500"], "--protocols: COCO 1K folds are 1000 images"),
    (["--compare", "a.npy", "b.npy", "--protocols", "coco"], "--compare reports this codebase's metrics only"),
])
def test_bad_protocol_options_are_refused_in_one_line(tmp_path, capsys, extra, message):
    small = tmp_path / "s.npy"
    np.save(small, np.zeros((10, 50), dtype=np.float32))
    code, out, err = run(["--ensemble", str(small)] + extra, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {message}")


def test_scores_other_than_coco_5k_are_refused(tmp_path, capsys):
    small = tmp_path / "s.npy"
    np.save(small, np.zeros((10, 50), dtype=np.float32))
    code, _, err = run(["--ensemble", str(small), "--protocols", "coco"], capsys)
    assert code == 2 and err == ("error: --protocols: the benchmarks cover COCO's 5K test split (coco_precomp "
                                 "testall, 5000 images x 25000 captions); the scores hold 10 x 50\n")


def test_missing_package_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "eccv_caption", None)
    with pytest.raises(XDimError, match=r"need the eccv_caption package: pip install eccv_caption$"):
        protocols.load_package()


def test_coco_alone_shows_our_own_metrics_without_the_package():
    ours = {"all": {f"{d}_r{k}": float(k) for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"rsum": 32.0},
            "fold_mean": {f"{d}_r{k}": 2.0 * k for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"i2t_medr": 1.0}}
    rows = protocols.evaluate(None, ours, ("coco",), None)
    assert rows == {"coco_1k": {f"{d}_r{k}": 2.0 * k for d in ("i2t", "t2i") for k in (1, 5, 10)},
                    "coco_5k": {f"{d}_r{k}": float(k) for d in ("i2t", "t2i") for k in (1, 5, 10)}}
    assert protocols.protocols_table(rows).splitlines()[3].split("|")[1].split() == ["2.0", "10.0", "20.0", "-", "-"]
