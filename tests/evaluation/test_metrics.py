"""lib/evaluation/metrics.py: ranks, recalls and 5-fold averages against hand-computed and torchmetrics references."""
import json

import numpy as np
import pytest
import torch
from helpers import one_caption_scores, reference_fold_metrics
from torchmetrics.retrieval import RetrievalHitRate

import eval as eval_cli
from lib.errors import XDimError
from lib.evaluation import metrics, score_files


def test_recall_metrics_hand_computed():
    r1, r5, r10, medr, meanr = metrics.recall_metrics(np.array([0, 0, 3, 7, 12]))
    assert (r1, r5, r10) == (40.0, 60.0, 80.0)
    assert medr == 4.0  # median 3
    assert meanr == pytest.approx(22 / 5 + 1)
    # even count: median 1.5 is floored before the +1
    assert metrics.recall_metrics(np.array([0, 1, 2, 5]))[3:] == [2.0, 3.0]


def test_ranks_one_caption_per_image_with_ties():
    sims = np.array([[0.5, 0.5, 0.1],
                     [0.9, 0.3, 0.2],
                     [0.0, 0.0, 0.7]], dtype=np.float32)
    # image 0 ties with caption 1: the tie counts against it
    assert metrics.i2t_ranks(sims, 1).tolist() == [1, 1, 0]
    # caption 0: image 1 scores higher; caption 1: image 0 higher; caption 2 first
    assert metrics.t2i_ranks(sims, 1).tolist() == [1, 1, 0]


def test_i2t_rank_uses_best_true_caption_and_pessimistic_ties():
    sims = np.zeros((2, 10), dtype=np.float32)
    sims[0, :5] = [0.2, 0.8, 0.8, 0.1, 0.0]   # true captions of image 0
    sims[0, 5:] = [0.9, 0.8, 0.3, 0.1, 0.0]   # one wrong above, one wrong tied
    sims[1, :5] = 0.5                          # wrong captions of image 1
    sims[1, 5:] = [0.1, 0.5, 0.4, 0.0, 0.0]   # best true 0.5 ties five wrong ones
    # image 0: 0.9 and the tied wrong 0.8 come first; its other true 0.8 does not count
    assert metrics.i2t_ranks(sims, 5).tolist() == [2, 5]
    # each caption against the other image: c0 0.2<0.5, c1/c2 0.8>0.5, c3 0.1<0.5, c4 0<0.5,
    # c5 0.1<0.9, c6 0.5<0.8, c7 0.4>0.3, c8 0<0.1, c9 0=0 (tie counts against it)
    t2i = metrics.t2i_ranks(sims, 5)
    assert t2i.tolist() == [1, 0, 0, 1, 1, 1, 1, 0, 1, 1]


def _reference_ranks(sims, cpi):
    """Loop reference: sort descending, wrong items before true ones inside ties."""
    n_img, n_cap = sims.shape
    i2t = []
    for i in range(n_img):
        truth = np.zeros(n_cap, bool)
        truth[cpi * i:cpi * i + cpi] = True
        order = np.lexsort((truth, -sims[i].astype(np.float64)))
        i2t.append(int(np.flatnonzero(truth[order]).min()))
    t2i = []
    for c in range(n_cap):
        truth = np.arange(n_img) == c // cpi
        order = np.lexsort((truth, -sims[:, c].astype(np.float64)))
        t2i.append(int(np.flatnonzero(truth[order])[0]))
    return np.array(i2t), np.array(t2i)


@pytest.mark.parametrize("cpi", [1, 5])
def test_ranks_match_loop_reference_with_many_ties(cpi):
    rng = np.random.default_rng(0)
    sims = rng.integers(0, 4, size=(13, 13 * cpi)).astype(np.float32)  # coarse: many ties
    i2t, t2i = _reference_ranks(sims, cpi)
    assert metrics.i2t_ranks(sims, cpi, rows_per_chunk=4).tolist() == i2t.tolist()
    assert metrics.t2i_ranks(sims, cpi, cols_per_chunk=7).tolist() == t2i.tolist()


def test_evaluate_sims_perfect_and_metric_names():
    sims = np.kron(np.eye(3), np.ones((1, 5))).astype(np.float32)  # true pairs 1, others 0
    values, ranks = metrics.evaluate_sims(sims, 5)
    assert list(values) == metrics.METRIC_KEYS
    assert values["rsum"] == 600.0
    assert values["i2t_medr"] == values["t2i_medr"] == 1.0
    assert ranks["i2t"].shape == (3,) and ranks["t2i"].shape == (15,)


def test_constant_scores_are_worst_case_not_perfect():
    values, _ = metrics.evaluate_sims(np.zeros((20, 100), np.float32), 5)
    assert values["i2t_r1"] == 0.0 and values["t2i_r1"] == 0.0
    assert values["i2t_meanr"] == 96.0 and values["t2i_meanr"] == 20.0


def test_evaluate_sims_rejects_bad_matrices():
    with pytest.raises(XDimError, match="captions per image"):
        metrics.evaluate_sims(np.zeros((3, 14)), 5)
    bad = np.zeros((2, 10))
    bad[0, 3] = np.nan
    with pytest.raises(XDimError, match="NaN"):
        metrics.evaluate_sims(bad, 5)


def _fold_expected(bad):
    """Fold of 4 images x 20 captions with `bad` images whose true captions score
    below every wrong one (i2t rank 15, t2i rank 3), the others ranked first."""
    good = 100.0 * (4 - bad) / 4
    i2t_ranks = sorted([0] * (4 - bad) + [15] * bad)
    t2i_ranks = sorted([0] * (20 - 5 * bad) + [3] * (5 * bad))
    i2t_medr = np.floor((i2t_ranks[1] + i2t_ranks[2]) / 2) + 1
    t2i_medr = np.floor((t2i_ranks[9] + t2i_ranks[10]) / 2) + 1
    return {"i2t_r1": good, "i2t_r5": good, "i2t_r10": good,
            "t2i_r1": good, "t2i_r5": 100.0, "t2i_r10": 100.0, "rsum": 4 * good + 200.0,
            "i2t_medr": i2t_medr, "i2t_meanr": 15 * bad / 4 + 1,
            "t2i_medr": t2i_medr, "t2i_meanr": 0.75 * bad + 1}


def test_five_fold_slicing_and_averaging():
    fold_images, cpi, bads = 4, 5, [0, 1, 2, 0, 1]
    sims = np.full((20, 100), 10.0, np.float32)  # outside the folds: would win every rank
    for k, (rows, cols) in enumerate(metrics.fold_slices(5, fold_images, cpi)):
        assert (rows.start, rows.stop, cols.start, cols.stop) == (4 * k, 4 * k + 4, 20 * k, 20 * k + 20)
        block = np.kron(np.eye(4), np.ones((1, 5)))
        block[:bads[k]] *= -1.0
        sims[rows, cols] = block
    folds, mean = metrics.evaluate_folds(sims, cpi, n_folds=5, fold_images=fold_images)
    for k, values in enumerate(folds):
        assert values == pytest.approx(_fold_expected(bads[k]))
    expected = [_fold_expected(b) for b in bads]
    assert mean == pytest.approx({key: np.mean([e[key] for e in expected]) for key in metrics.METRIC_KEYS})
    assert mean["rsum"] == pytest.approx(sum(mean[k] for k in metrics.METRIC_KEYS[:6]))
    results = metrics.run_protocol(sims, cpi, fold5=True, fold_images=fold_images)
    assert set(results) == {"all", "folds", "fold_mean", "fold_std"}
    assert results["all"]["i2t_r1"] == 0.0  # the 10.0 entries beat every true pair overall
    # i2t R@1 of the folds: 100, 75, 50, 100, 75 (mean 80): sample variance 1750 / 4.
    assert results["fold_std"]["i2t_r1"] == pytest.approx(437.5 ** 0.5)
    assert results["fold_std"]["t2i_r5"] == 0.0
    std_row = next(line for line in metrics.results_table(results, "x").splitlines() if "5-fold std" in line)
    assert std_row.split("|")[1].split()[0] == "20.9"


def test_five_fold_needs_enough_images():
    with pytest.raises(XDimError, match="5 folds"):
        metrics.evaluate_folds(np.zeros((9, 45), np.float32), 5, 5, 2)


def test_table_labels_each_figure():
    values = dict(zip(metrics.METRIC_KEYS, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 21.0, 7.0, 8.0, 9.0, 10.0]))
    lines = metrics.format_table([("demo", values)]).splitlines()
    header = lines[1].split("|")
    values = lines[3].split("|")
    assert header[1].split() == ["R@1", "R@5", "R@10"] and values[1].split() == ["1.0", "2.0", "3.0"]
    assert "image-to-text" in lines[0].split("|")[1] and "text-to-image" in lines[0].split("|")[2]
    assert values[2].split() == ["4.0", "5.0", "6.0"]
    assert header[3].split() == ["rSum"] and values[3].split() == ["21.0"]
    assert header[4].split() == ["medr", "meanr"] and values[4].split() == ["7.0", "8.0"]
    assert lines[0].split("|")[4].strip() == "i2t" and lines[0].split("|")[5].strip() == "t2i"
    assert values[5].split() == ["9.0", "10.0"]


def hit_rate(scores, relevant, k):
    """torchmetrics' hit rate in percent. scores, relevant: (n_queries, n_items) float / bool."""
    queries = torch.arange(scores.shape[0])[:, None].expand(scores.shape)
    metric = RetrievalHitRate(top_k=k)
    return 100 * float(metric(torch.as_tensor(scores).flatten(), torch.as_tensor(relevant).flatten(),
                              indexes=queries.flatten()))


@pytest.mark.parametrize("cpi", [1, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_recall_at_k_equals_torchmetrics_hit_rate(cpi, seed):
    n_images = 40
    rng = np.random.default_rng(seed)
    # A permutation of distinct values: no ties. Raising the true pairs a little gives every K some hits.
    sims = rng.permutation(n_images * cpi * n_images).reshape(n_images, cpi * n_images).astype(np.float64)
    truth = np.arange(cpi * n_images)[None, :] // cpi == np.arange(n_images)[:, None]  # (n_img, n_cap)
    sims += truth * rng.integers(0, 2, size=(n_images, 1)) * sims.size * rng.random((n_images, 1))
    assert len(np.unique(sims)) == sims.size
    ours = metrics.evaluate_sims(sims, cpi)[0]
    for k in (1, 5, 10):
        assert ours[f"i2t_r{k}"] == pytest.approx(hit_rate(sims, truth, k), abs=1e-4)  # float32 means; one query is 2.5 points
        assert ours[f"t2i_r{k}"] == pytest.approx(hit_rate(sims.T, truth.T, k), abs=1e-4)  # float32 means; one query is 2.5 points
    # The matrices are not trivial: some queries hit at K = 1 and some miss at K = 10.
    assert 0 < ours["i2t_r1"] and ours["t2i_r10"] < 100


def test_fold5_with_one_caption_per_image(tmp_path, capsys):
    # catches: evaluate_folds slicing captions as if there were 5 per image (cpi dropped).
    sims = one_caption_scores()
    path = str(tmp_path / "sims.npy")
    score_files.save_score_file(sims, path)
    out = str(tmp_path / "m.json")
    assert eval_cli.main(["--ensemble", path, "--fold5", "--fold_images", "12", "--json", out,
                          "--device", "cpu"]) == 0
    capsys.readouterr()
    with open(out, encoding="utf-8") as f:
        results = json.load(f)
    assert results["captions_per_image"] == 1 and len(results["folds"]) == 5
    for k, fold in enumerate(results["folds"]):
        for key, value in reference_fold_metrics(sims[12 * k:12 * k + 12, 12 * k:12 * k + 12]).items():
            assert fold[key] == pytest.approx(value, abs=1e-3), (k, key)
    assert 0 < results["fold_mean"]["rsum"] < 600
