"""lib/evaluation/compare.py and eval.py --compare: per-image scores and the paired bootstrap."""
import json

import numpy as np
import pytest
from helpers import TINY_IMG_DIM

import eval as eval_cli
import train as train_cli
from lib.evaluation import compare, metrics

N_IMAGES = 200


def random_sims(n_images, cpi, seed=0):
    """Tie-free random scores in [0, 1), (n_images, cpi * n_images) float32."""
    return np.random.default_rng(seed).random((n_images, cpi * n_images)).astype(np.float32)


def planted(n_images=N_IMAGES, cpi=5, improved=40, seed=0):
    """(A, B): A's first `improved` images score their own captions -1, below every other
    score (a miss at every K in both directions); B gives them 2, above all (a hit). Nothing else differs."""
    a = random_sims(n_images, cpi, seed)
    b = a.copy()
    for image in range(improved):
        a[image, cpi * image:cpi * image + cpi] = -1.0
        b[image, cpi * image:cpi * image + cpi] = 2.0
    return a, b


@pytest.mark.parametrize("cpi", [1, 5])
def test_per_image_scores_average_to_the_metrics(cpi):
    sims = random_sims(30, cpi, seed=cpi)
    sims[np.arange(30)[:, None], np.arange(30)[:, None] * cpi + np.arange(cpi)] += 0.3  # some hits
    expected = metrics.evaluate_sims(sims, cpi)[0]
    scores = compare.per_image_scores(sims, cpi)
    assert scores.shape == (30, 7)
    assert scores.mean(axis=0) == pytest.approx([expected[key] for key in compare.COMPARED_KEYS])


def test_per_image_scores_of_a_hand_made_matrix():
    # 2 images, 2 captions each. Image 0: best true caption 0 (0.9) beaten by caption 2 (0.95) -> rank 1.
    # Image 1: true captions 2, 3 score 0.95, 0.1, beating all -> rank 0.
    # Captions: 0 -> image 0 (0.9 vs 0.2) rank 0; 1 -> 0.3 vs 0.4 rank 1; 2 -> 0.95 vs 0.95 tie counts
    # against -> rank 1; 3 -> 0.1 vs 0.0 rank 0.
    sims = np.array([[0.9, 0.3, 0.95, 0.0],
                     [0.2, 0.4, 0.95, 0.1]], dtype=np.float32)
    scores = compare.per_image_scores(sims, 2)
    assert scores.tolist() == [[0, 100, 100, 50, 100, 100, 450], [100, 100, 100, 50, 100, 100, 550]]


def test_fold_scores_average_to_the_5_fold_mean():
    sims = random_sims(20, 5, seed=3)
    _, mean = metrics.evaluate_folds(sims, 5, n_folds=5, fold_images=4)
    scores = compare.per_image_fold_scores(sims, 5, n_folds=5, fold_images=4)
    assert scores.shape == (20, 7)
    assert scores.mean(axis=0) == pytest.approx([mean[key] for key in compare.COMPARED_KEYS])


def test_b_equal_to_a_gives_a_zero_difference_and_a_zero_width_interval():
    sims = random_sims(N_IMAGES, 5)
    comparison = compare.compare_sims(sims, sims.copy(), 5, n_resamples=500)["all"]
    for key in compare.COMPARED_KEYS:
        assert comparison[key]["diff"] == 0.0
        assert comparison[key]["ci_low"] == 0.0 == comparison[key]["ci_high"]


def test_planted_improvements_give_their_difference_and_an_interval_excluding_0():
    improved = 40
    a, b = planted(improved=improved)
    comparison = compare.compare_sims(a, b, 5, n_resamples=4000, seed=1)["all"]
    share = improved / N_IMAGES
    # Each per-image difference is 0 or 100 (600 for rSum): the interval should be close to the normal
    # one, share +- 1.96 * sqrt(share (1 - share) / n) in percent.
    half_width = 1.96 * 100 * np.sqrt(share * (1 - share) / N_IMAGES)
    for key in compare.COMPARED_KEYS:
        scale = 6 if key == "rsum" else 1
        row = comparison[key]
        assert row["b"] - row["a"] == pytest.approx(row["diff"])
        assert row["diff"] == pytest.approx(scale * 100 * share)
        assert row["ci_low"] > 0
        assert row["ci_low"] == pytest.approx(scale * (100 * share - half_width), abs=scale * 1.5)
        assert row["ci_high"] == pytest.approx(scale * (100 * share + half_width), abs=scale * 1.5)


def test_the_interval_depends_only_on_the_seed():
    a, b = planted(improved=30, seed=4)
    first = compare.compare_sims(a, b, 5, n_resamples=300, seed=7)
    assert compare.compare_sims(a, b, 5, n_resamples=300, seed=7) == first
    assert compare.compare_sims(a, b, 5, n_resamples=300, seed=8) != first


def test_a_worse_b_gives_a_negative_interval():
    a, b = planted(improved=40)
    row = compare.compare_sims(b, a, 5, n_resamples=1000)["all"]["t2i_r1"]
    assert row["diff"] == pytest.approx(-20.0) and row["ci_high"] < 0


def test_matrices_of_two_splits_are_refused():
    with pytest.raises(compare.XDimError, match=r"shapes \(4, 20\) and \(5, 25\) cannot be compared"):
        compare.compare_sims(random_sims(4, 5), random_sims(5, 5), 5)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save(tmp_path, name, sims):
    path = tmp_path / name
    np.save(path, sims)
    return str(path)


def test_eval_compare_prints_and_writes_each_metric_with_its_interval(tmp_path, capsys):
    a, b = planted(n_images=1000, improved=100)  # 5 folds of 200 images
    path_a, path_b = save(tmp_path, "a.npy", a), save(tmp_path, "b.npy", b)
    report = tmp_path / "compare.json"
    code = eval_cli.main(["--compare", path_a, path_b, "--fold5", "--fold_images", "200", "--n_resamples", "300",
                          "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    written = read_json(report)["compare"]
    assert (written["a"], written["b"], written["n_resamples"], written["seed"]) == (path_a, path_b, 300, 0)
    assert set(written) >= {"all", "fold_mean"}
    expected = compare.compare_sims(a, b, 5, fold5=True, fold_images=200, n_resamples=300, seed=0)
    assert written["all"] == metrics.rounded(expected["all"])
    assert written["fold_mean"] == metrics.rounded(expected["fold_mean"])
    row = expected["all"]["rsum"]
    line = next(line for line in out.splitlines() if line.startswith("rsum"))
    assert [cell.strip() for cell in line.split("|")] == [
        "rsum", f"{row['a']:.2f}", f"{row['b']:.2f}", f"{row['diff']:+.2f}",
        f"[{row['ci_low']:+7.2f}, {row['ci_high']:+7.2f}]"]
    # The official {'npts', 'sims'} format is read like ours.
    official = tmp_path / "official.npy"
    np.save(official, {"npts": a.shape[0], "sims": a.astype(np.float64)}, allow_pickle=True)
    assert eval_cli.main(["--compare", str(official), path_a, "--n_resamples", "50", "--json", str(report)]) == 0
    assert read_json(report)["compare"]["all"]["rsum"]["diff"] == 0.0


@pytest.mark.parametrize("extra, message", [
    (["--model_path", "x.pth"], ("error: --compare A B takes the two sides itself: leave out --model_path, "
                                 "--ensemble, --shortlist and --save_sims")),
    (["--save_sims", "s.npy"], ("error: --compare A B takes the two sides itself: leave out --model_path, "
                                "--ensemble, --shortlist and --save_sims")),
    (["--n_resamples", "0"], ("error: --n_resamples 0: must be at least 40 for a 95% interval (the default, "
                              "10000, gives stable bounds)")),
])
def test_eval_compare_rejects_bad_options(tmp_path, capsys, extra, message):
    path = save(tmp_path, "a.npy", random_sims(4, 5))
    assert eval_cli.main(["--compare", path, path, *extra]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_eval_compare_names_a_missing_side_before_any_work(tmp_path, capsys):
    path = save(tmp_path, "a.npy", random_sims(4, 5))
    missing = str(tmp_path / "nope.pth")
    assert eval_cli.main(["--compare", path, missing]) == 2
    assert capsys.readouterr().err == (f"error: {missing}: no such file (--compare takes two .npy score files "
                                       "or checkpoints)\n")


def test_eval_compare_scores_a_checkpoint_like_eval_py(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    """A checkpoint against its own --save_sims file: the difference is exactly 0."""
    data_path, data_name = tiny_precomp
    assert train_cli.main(["--data_path", data_path, "--data_name", data_name, "--bert_path", tiny_bert_dir,
                           "--img_dim", str(TINY_IMG_DIM), "--embed_size", "16", "--batch_size", "32",
                           "--num_epochs", "1", "--workers", "0", "--device", "cpu", "--log_step", "100",
                           "--model_name", str(tmp_path / "ckpt"), "--logger_name", str(tmp_path / "log")]) == 0
    checkpoint = str(tmp_path / "ckpt" / "model_best.pth")
    common = ["--data_path", data_path, "--data_name", data_name, "--split", "test", "--device", "cpu",
              "--workers", "0", "--no_progress"]
    sims = str(tmp_path / "sims.npy")
    assert eval_cli.main(["--model_path", checkpoint, "--save_sims", sims, *common]) == 0
    report = tmp_path / "compare.json"
    capsys.readouterr()
    assert eval_cli.main(["--compare", checkpoint, sims, "--n_resamples", "100", "--json", str(report), *common]) == 0
    written = read_json(report)["compare"]["all"]
    expected = metrics.evaluate_sims(np.load(sims), 5)[0]
    for key in compare.COMPARED_KEYS:
        assert written[key]["a"] == pytest.approx(expected[key], abs=1e-3) and written[key]["diff"] == 0.0


def test_eval_json_holds_the_fold_spread(tmp_path):
    sims = save(tmp_path, "s.npy", random_sims(20, 5, seed=2))
    report = tmp_path / "r.json"
    assert eval_cli.main(["--ensemble", sims, "--fold5", "--fold_images", "4", "--json", str(report)]) == 0
    written = read_json(report)
    folds, _ = metrics.evaluate_folds(np.load(sims), 5, 5, 4)
    rsums = [fold["rsum"] for fold in folds]
    assert written["fold_std"]["rsum"] == pytest.approx(float(np.std(rsums, ddof=1)), abs=1e-3)
