"""lib/training/ablation.py and ablate.py: variants, seeds and their table."""
import json
import os

import pytest
from helpers import TINY_IMG_DIM, run_main

import ablate
import eval as eval_cli
from lib.cli.ablate import ablation_parser
from lib.evaluation.metrics import METRIC_KEYS
from lib.formats.checkpoint import load_checkpoint


def run_ablate(tmp_path_factory, tiny_precomp, tiny_bert_dir, *extra):
    """(out folder, stdout) of a successful 2-variant (xdim, cosine), 1-epoch ablation on the tiny data."""
    out = str(tmp_path_factory.mktemp("ablation"))
    data_path, data_name = tiny_precomp
    argv = ["--data_path", data_path, "--data_name", data_name, "--bert_path", tiny_bert_dir,
            "--img_dim", str(TINY_IMG_DIM), "--embed_size", "16", "--batch_size", "32", "--num_epochs", "1",
            "--variants", "xdim", "cosine", "--split", "test", "--out", out, "--log_step", "100", *extra]
    return out, run_main(ablate.main, argv).out


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, tiny_precomp, tiny_bert_dir):
    """run_ablate with one seed."""
    return run_ablate(tmp_path_factory, tiny_precomp, tiny_bert_dir)


def test_ablation_trains_each_variant_and_writes_the_table(ablation):
    out, stdout = ablation
    results = json.load(open(os.path.join(out, "ablation.json")))
    assert results["split"] == "test" and [row["sim"] for row in results["variants"]] == ["xdim", "cosine"]
    assert results["training"]["num_epochs"] == 1 and results["model"]["embed_size"] == 16
    lines = stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("variant")))
    for offset, row in enumerate(results["variants"], start=2):
        assert set(row["metrics"]) >= set(METRIC_KEYS)
        recalls = [row["metrics"][f"{side}_r{k}"] for side in ("i2t", "t2i") for k in (1, 5, 10)]
        assert row["rsum"] == pytest.approx(sum(recalls))
        assert row["i2t_r1"] == row["metrics"]["i2t_r1"] and row["t2i_r1"] == row["metrics"]["t2i_r1"]
        # Each variant's own checkpoint, trained with its --sim and the same seed otherwise.
        saved = load_checkpoint(row["checkpoint"])
        assert saved["model_config"]["sim"] == row["sim"]
        assert saved["train_config"]["seed"] == 0 and saved["train_config"]["num_epochs"] == 1
        assert row["checkpoint"] == os.path.join(out, row["sim"], "checkpoint", "model_best.pth")
        cells = [cell.strip() for cell in lines[header + offset].split("|")]
        assert cells[:4] == [row["sim"], f"{row['i2t_r1']:.1f}", f"{row['t2i_r1']:.1f}", f"{row['rsum']:.1f}"]


def test_ablation_figures_equal_eval_py_on_each_checkpoint(ablation, tiny_precomp, tmp_path, capsys):
    out, _ = ablation
    rows = json.load(open(os.path.join(out, "ablation.json")))["variants"]
    data_path, data_name = tiny_precomp
    for row in rows:
        report = tmp_path / f"{row['sim']}.json"
        run_main(eval_cli.main, ["--model_path", row["checkpoint"], "--data_path", data_path, "--data_name",
                                 data_name, "--split", "test", "--device", "cpu", "--workers", "0",
                                 "--no_progress", "--json", str(report)])
        assert json.load(open(report))["all"] == pytest.approx(row["metrics"])


def test_ablation_rejects_an_unknown_variant(capsys):
    with pytest.raises(SystemExit) as info:
        ablation_parser("ablate").parse_args(["--variants", "xdim", "nope"])
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--model_name", "--logger_name"])
def test_ablation_refuses_an_option_it_sets_per_variant(option, capsys):
    assert ablate.main([option, "somewhere", "--variants", "xdim"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}: ablate.py sets it for every variant") and err.count("\n") == 1


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, tiny_precomp, tiny_bert_dir):
    """run_ablate with `--seeds 2 --seed 3`."""
    return run_ablate(tmp_path_factory, tiny_precomp, tiny_bert_dir, "--seeds", "2", "--seed", "3",
                      "--n_resamples", "500")


def test_seeds_train_every_variant_with_each_seed_and_report_mean_and_std(two_seeds):
    out, stdout = two_seeds
    results = json.load(open(os.path.join(out, "ablation.json")))
    assert results["seeds"] == [3, 4]
    runs = [(row["sim"], row["seed"]) for row in results["variants"]]
    assert runs == [("xdim", 3), ("cosine", 3), ("xdim", 4), ("cosine", 4)]
    for row in results["variants"]:
        assert load_checkpoint(row["checkpoint"])["train_config"]["seed"] == row["seed"]
        assert row["checkpoint"] == os.path.join(out, f"seed_{row['seed']}", row["sim"], "checkpoint",
                                                 "model_best.pth")
    lines = stdout.splitlines()
    for name in ("xdim", "cosine"):
        rsums = [row["rsum"] for row in results["variants"] if row["sim"] == name]
        mean, std = sum(rsums) / 2, abs(rsums[0] - rsums[1]) / 2 ** 0.5
        assert results["summary"][name]["rsum"] == pytest.approx({"mean": mean, "std": std})
        cells = [cell.strip() for cell in next(line for line in lines if line.startswith(name + " ")).split("|")]
        assert cells[3] == f"{mean:.1f} ± {std:.1f}"


def test_seeds_interval_is_of_the_seed_averaged_difference_to_the_first_variant(two_seeds):
    out, stdout = two_seeds
    results = json.load(open(os.path.join(out, "ablation.json")))
    assert results["baseline"] == "xdim" and list(results["intervals"]) == ["cosine"]
    rsum = {name: [row["rsum"] for row in results["variants"] if row["sim"] == name] for name in ("xdim", "cosine")}
    interval = results["intervals"]["cosine"]["rsum"]
    assert interval["diff"] == pytest.approx(sum(rsum["cosine"]) / 2 - sum(rsum["xdim"]) / 2)
    assert interval["ci_low"] <= interval["diff"] <= interval["ci_high"]
    line = next(line for line in stdout.splitlines() if line.startswith("cosine") and "[" in line)
    assert f"{interval['diff']:+6.1f} [{interval['ci_low']:+6.1f}, {interval['ci_high']:+6.1f}]" in line
