"""ablate.py / lib/training/ablation.py on the tiny fixtures: 2 variants, 1 epoch each."""
import json
import os

import pytest

import ablate
import eval as eval_cli
from lib.formats.checkpoint import load_checkpoint
from lib.evaluation.metrics import METRIC_KEYS
from conftest import TINY_IMG_DIM
from script_runs import run_main


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, tiny_precomp, tiny_bert_dir):
    """(out folder, stdout) of a successful 2-variant, 1-epoch ablation on the tiny data."""
    out = str(tmp_path_factory.mktemp("ablation"))
    data_path, data_name = tiny_precomp
    argv = ["--data_path", data_path, "--data_name", data_name, "--bert_path", tiny_bert_dir,
            "--img_dim", str(TINY_IMG_DIM), "--embed_size", "16", "--batch_size", "32", "--num_epochs", "1",
            "--variants", "xdim", "cosine", "--split", "test", "--out", out, "--log_step", "100"]
    return out, run_main(ablate.main, argv).out


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
        ablate.build_parser().parse_args(["--variants", "xdim", "nope"])
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--model_name", "--logger_name"])
def test_ablation_refuses_an_option_it_sets_per_variant(option, capsys):
    assert ablate.main([option, "somewhere", "--variants", "xdim"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}: ablate.py sets it for every variant") and err.count("\n") == 1
