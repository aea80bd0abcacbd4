"""Metrics, fold protocol, ragged storage, sharded scoring and score files."""
import os
import pickle

import numpy as np
import pytest
import torch

from lib.errors import XDimError
from lib.evaluation import encoding, metrics, score_files, scoring
from lib.model.similarity import Similarity

# ---------------------------------------------------------------- metrics

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


# ---------------------------------------------------------------- 5-fold protocol

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


# ---------------------------------------------------------------- ragged storage

def _padded_batch(seed, n, max_len, d):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    emb = torch.randn(n, max_len, d, generator=g)
    return emb, lengths


def test_ragged_round_trip_and_gather():
    emb, lengths = _padded_batch(0, 7, 9, 5)
    ragged = encoding.RaggedCaptions.from_padded(emb, lengths)
    assert len(ragged) == 7
    assert ragged.tokens.shape == (int(lengths.sum()), 5)
    assert ragged.offsets.tolist() == [0] + torch.cumsum(lengths, 0).tolist()
    assert ragged.nbytes == int(lengths.sum()) * 5 * 4 + 8 * 8
    padded, lens = ragged.block(2, 6)
    assert lens.tolist() == lengths[2:6].tolist()
    assert padded.shape == (4, int(lengths[2:6].max()), 5)
    for row, c in enumerate(range(2, 6)):
        n = int(lengths[c])
        assert torch.equal(padded[row, :n], emb[c, :n])
        assert not padded[row, n:].any()
    picked, picked_lens = ragged.gather(torch.tensor([6, 0, 3]))
    for row, c in enumerate([6, 0, 3]):
        assert torch.equal(picked[row, :int(lengths[c])], emb[c, :int(lengths[c])])
    assert picked_lens.tolist() == lengths[[6, 0, 3]].tolist()


def test_ragged_append_batches_of_different_widths_and_half_storage():
    first, first_len = _padded_batch(1, 3, 4, 6)
    second, second_len = _padded_batch(2, 5, 11, 6)
    ragged = encoding.RaggedCaptions(6, torch.float16)
    ragged.append(first, first_len)
    ragged.append(second, second_len)
    assert len(ragged) == 8 and ragged.tokens.dtype == torch.float16
    assert ragged.nbytes == int(first_len.sum() + second_len.sum()) * 6 * 2 + 9 * 8
    padded, lens = ragged.block(3, 8)
    assert padded.dtype == torch.float32
    for row in range(5):
        n = int(second_len[row])
        torch.testing.assert_close(padded[row, :n], second[row, :n], rtol=1e-3, atol=1e-3)


def test_ragged_rejects_bad_lengths():
    with pytest.raises(ValueError):
        encoding.RaggedCaptions.from_padded(torch.zeros(2, 3, 4), torch.tensor([3, 4]))


# ---------------------------------------------------------------- sharded scoring

class ToySimilarity(Similarity):
    """Mean over real words of the best region dot product; records the caption shapes it gets."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def score(self, img, cap, cap_lens, img_lens, prepared):
        self.calls.append(tuple(cap.shape))
        dots = torch.einsum("ird,cld->iclr", img, cap).amax(-1)
        mask = (torch.arange(cap.shape[1]) < cap_lens[:, None]).float()
        return (dots * mask).sum(-1) / cap_lens


def test_sharded_scores_equal_float64_reference():
    g = torch.Generator().manual_seed(3)
    img = torch.randn(11, 4, 6, generator=g)
    emb, lengths = _padded_batch(4, 23, 8, 6)
    ragged = encoding.RaggedCaptions.from_padded(emb, lengths)
    toy = ToySimilarity()
    sims = scoring.score_sharded(img, ragged, toy, rows_per_block=12, progress=False)
    assert sims.dtype == np.float32 and sims.shape == (11, 23)
    assert len(toy.calls) > 11 * 2  # really blocked in both directions
    assert min(shape[1] for shape in toy.calls) < max(lengths)  # short captions not padded to the longest
    reference = np.zeros((11, 23))
    for i in range(11):
        for c in range(23):
            words = emb[c, :int(lengths[c])].double()
            reference[i, c] = (words @ img[i].double().T).max(1).values.mean()
    np.testing.assert_allclose(sims, reference, rtol=1e-5, atol=1e-6)
    unsharded = scoring.score_sharded(img, ragged, ToySimilarity(), rows_per_block=10 ** 9, progress=False)
    np.testing.assert_allclose(sims, unsharded, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- score files

def test_score_file_round_trip(tmp_path):
    sims = np.random.default_rng(0).random((4, 20)).astype(np.float32)
    path = tmp_path / "s.npy"
    score_files.save_score_file(sims, path)
    assert np.array_equal(np.load(path, allow_pickle=False), sims)
    assert np.array_equal(score_files.load_score_file(path), sims)


def test_official_dict_score_file_is_read(tmp_path):
    sims = np.random.default_rng(1).random((3, 15))
    path = tmp_path / "official.npy"
    np.save(path, {"npts": 3, "sims": sims}, allow_pickle=True)
    loaded = score_files.load_score_file(path)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, sims, rtol=1e-6)


def test_official_dict_written_by_numpy_1_is_read(tmp_path):
    """Pickles from numpy 1.x name numpy.core.multiarray, not numpy._core."""
    sims = np.arange(6, dtype=np.float64).reshape(1, 6)[:, :5]
    obj = np.empty((), dtype=object)
    obj[()] = {"npts": 1, "sims": np.ascontiguousarray(sims)}
    path = tmp_path / "old.npy"
    np.save(path, obj, allow_pickle=True)
    raw = path.read_bytes()
    if b"numpy._core.multiarray" in raw:  # rewrite as numpy 1 would have written it
        header_end = raw.index(b"\n") + 1
        body = pickle.loads(raw[header_end:])  # our own file, just written
        data = pickle.dumps(body, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        path.write_bytes(raw[:header_end] + data)
    np.testing.assert_allclose(score_files.load_score_file(path), sims)


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


def test_score_file_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, {"npts": 1, "sims": _Sneaky()}, allow_pickle=True)
    with pytest.raises(XDimError, match="evil.npy"):
        score_files.load_score_file(path)
    other = tmp_path / "list.npy"
    np.save(other, np.array([[1, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(XDimError, match="list.npy"):
        score_files.load_score_file(other)
    with pytest.raises(XDimError, match="missing.npy"):
        score_files.load_score_file(tmp_path / "missing.npy")
    mismatch = tmp_path / "npts.npy"
    np.save(mismatch, {"npts": 7, "sims": np.zeros((2, 10))}, allow_pickle=True)
    with pytest.raises(XDimError, match="npts"):
        score_files.load_score_file(mismatch)


def test_ensemble_averages_and_checks_shapes():
    a = np.ones((2, 10), np.float32)
    b = 3 * np.ones((2, 10), np.float32)
    assert np.array_equal(score_files.ensemble_sims([a, b]), 2 * a)
    with pytest.raises(XDimError, match="shape"):
        score_files.ensemble_sims([a, np.ones((2, 5), np.float32)])
    assert score_files.infer_captions_per_image(a, "x") == 5
    with pytest.raises(XDimError, match="x:"):
        score_files.infer_captions_per_image(np.ones((2, 7)), "x")
