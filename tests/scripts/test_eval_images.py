"""eval.py, test.py and torchrun evaluation of a raw-image checkpoint on a split of image files:
scores as the model computes them, each image decoded once, ensembles, --compare, --shortlist."""
import contextlib
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from helpers import checkpoint_of, join_group, run_command, run_main, spawn, write_image_layout

import eval as eval_cli
from lib.cli.train import default_options, train_configs
from lib.data import images as image_data
from lib.data.precomp import CaptionTokenizer, pad_tokens
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer
from lib.model.xdim_model import XDimModel
from lib.runtime import distributed
from lib.training.trainer import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_TEST = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_layout(str(tmp_path_factory.mktemp("images")), sizes={"train": 2, "dev": 2, "test": N_TEST})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_bert_dir, data):
    """An untrained, seeded raw-image checkpoint: tiny ResNet-101 (width 4), 64 x 64 pixels."""
    opt = default_options(precomp_enc_type="backbone", backbone_path="none", backbone_width=4,
                          input_scale_factor=0.25, embed_size=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data[0], data_name=data[1], seed=5)
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pth")
    model = build_model(train_configs(opt)[0], tiny_bert_dir, opt.seed, "cpu", "none")
    save_checkpoint(checkpoint_of(model, opt), path)
    return path


def run_captured(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = eval_cli.main(argv)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def eval_argv(checkpoint, out, *extra):
    return ["--model_path", checkpoint, "--split", "test", "--device", "cpu", "--batch_size", "4",
            "--workers", "0", "--threads", "1", "--no_progress", "--save_sims", str(out / "sims.npy"),
            "--json", str(out / "metrics.json"), *extra]


def reference_sims(checkpoint, data, bert_dir):
    """Every test image's pixels in one batch, every caption padded in one batch, one forward_sim."""
    model = XDimModel.from_checkpoint(checkpoint)
    split = image_data.open_image_split(*data, "test")
    config = image_data.PixelConfig.for_backbone("detector", 0.25)
    pixels = torch.cat([batch for batch, _ in image_data.image_eval_batches(split, config, batch_size=100)])
    encoder = CaptionTokenizer(load_tokenizer(bert_dir), 64)
    captions, lengths = pad_tokens([torch.tensor(encoder.encode(c)) for c in split.captions])
    with torch.no_grad():
        img_emb, cap_emb, cap_lens = model.forward_emb(pixels, captions, lengths)
        return model.forward_sim(img_emb, cap_emb, cap_lens).numpy()


def test_eval_scores_the_image_split_decoding_each_image_once(tmp_path, checkpoint, data, tiny_bert_dir,
                                                            monkeypatch):
    decoded = []
    read_rgb = image_data.read_rgb
    monkeypatch.setattr(image_data, "read_rgb", lambda path: decoded.append(path) or read_rgb(path))
    result = run_captured(eval_argv(checkpoint, tmp_path))
    assert result["code"] == 0, result["err"]
    assert sorted(decoded) == sorted(image_data.open_image_split(*data, "test").image_paths)
    sims = np.load(tmp_path / "sims.npy")
    assert sims.shape == (N_TEST, 5 * N_TEST)
    monkeypatch.undo()
    np.testing.assert_allclose(sims, reference_sims(checkpoint, data, tiny_bert_dir), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["n_images"] == N_TEST


def test_ensemble_compare_and_shortlist(tmp_path, checkpoint):
    first = run_captured(eval_argv(checkpoint, tmp_path))
    single = json.loads((tmp_path / "metrics.json").read_text())
    os.rename(tmp_path / "sims.npy", tmp_path / "a.npy")
    both = run_captured(eval_argv(checkpoint, tmp_path, "--ensemble", str(tmp_path / "a.npy")))
    assert first["code"] == both["code"] == 0
    ensemble = json.loads((tmp_path / "metrics.json").read_text())
    assert ensemble["all"] == single["all"] and ensemble["ensemble"] == [str(tmp_path / "a.npy")]
    compared = run_captured(["--compare", str(tmp_path / "a.npy"), checkpoint, "--split", "test", "--device",
                             "cpu", "--workers", "0", "--no_progress", "--n_resamples", "50"])
    assert compared["code"] == 0 and "rsum" in compared["out"], compared["err"]
    pytest.importorskip("faiss")
    shortlisted = run_captured(eval_argv(checkpoint, tmp_path, "--shortlist", "3"))
    assert shortlisted["code"] == 0 and "two stages" in shortlisted["out"], shortlisted["err"]


def test_test_py_on_a_raw_image_checkpoint(checkpoint, data):
    run = run_command([sys.executable, "test.py", "--model_path", checkpoint, "--data_path", data[0],
                       "--device", "cpu", "--workers", "0", "--no_progress"], cwd=ROOT)
    assert "rsum" in run.out.lower() or "rSum" in run.out


def eval_worker(rank, world, out_dir, argv):
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    try:
        torch.save(run_captured(argv), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def test_eval_on_two_processes_equals_one(tmp_path, checkpoint):
    (tmp_path / "two").mkdir()
    spawn(eval_worker, (2, str(tmp_path), eval_argv(checkpoint, tmp_path / "two", "--batch_size", "2")))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    one = run_captured(eval_argv(checkpoint, tmp_path, "--batch_size", "2"))
    assert [r["code"] for r in ranks] == [0, 0] and ranks[0]["out"] == one["out"] and ranks[1]["out"] == ""
    np.testing.assert_allclose(np.load(tmp_path / "two" / "sims.npy"), np.load(tmp_path / "sims.npy"),
                               rtol=1e-6, atol=0)


def test_scripts_that_read_region_features_refuse_a_raw_image_checkpoint(tmp_path, checkpoint):
    import analyze
    import retrieve
    run = run_main(retrieve.main, ["distill", "--model_path", checkpoint, "--out", str(tmp_path / "head.pth"),
                                   "--device", "cpu"], expect=2)
    assert "a raw-image (backbone) checkpoint; retrieve.py takes region-feature checkpoints only" in run.err
    run = run_main(analyze.main, ["--model_path", checkpoint, "--out", str(tmp_path / "report"), "--pair", "0", "0"],
                   expect=2)
    assert "a raw-image (backbone) checkpoint; --words and --pair read region features" in run.err


def test_outputs_may_not_replace_the_image_split_inputs(tmp_path, checkpoint, data):
    ids = os.path.join(data[0], "precomp", "test_ids.txt")
    before = open(ids).read()
    run = run_main(eval_cli.main, ["--model_path", checkpoint, "--split", "test", "--device", "cpu", "--json", ids,
                                   "--no_progress"], expect=2)
    assert run.err.startswith("error: --json") and ids in run.err and open(ids).read() == before
