"""eval.py, test.py and testall.py: scores against references, ensembles, errors before work."""
import argparse
import json
import logging
import os
import sys

import numpy as np
import pytest
import torch
from helpers import (
    ROOT,
    _reference_scores,
    checkpoint_of,
    copy_data,
    help_text,
    model_from_options,
    one_error_line,
    poison,
    run_command,
    run_eval,
    run_main,
    trainer_for,
    write_official_checkpoint,
)

import eval as eval_cli
from lib.cli.evaluate import evaluation_parser
from lib.cli.train import default_options
from lib.data.precomp import CaptionTokenizer, open_split, train_loader
from lib.evaluation import metrics, score_files, scoring
from lib.formats.checkpoint import (
    save_checkpoint,
)
from lib.model.bert import load_tokenizer

EMBED = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """(checkpoint path, model) after two training steps on the tiny data."""
    data_path, data_name = tiny_precomp
    torch.manual_seed(0)
    opt = default_options(embed_size=EMBED, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data_path, data_name=data_name, batch_size=8, workers=0)
    model = model_from_options(opt)
    model.train()
    trainer = trainer_for(model, opt)
    files = open_split(data_path, data_name, "train", img_dim=32)
    loader = train_loader(files, CaptionTokenizer(load_tokenizer(tiny_bert_dir), 64), batch_size=8)
    for _, batch in zip(range(2), loader):
        images, image_lengths, captions, lengths = batch[:4]
        trainer.train_step(images, captions, lengths, image_lengths)
    path = str(tmp_path_factory.mktemp("ckpt") / "model_best.pth")
    save_checkpoint(checkpoint_of(model, opt), path)
    return path, model


def _run(argv, capsys):
    code = eval_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _loop_metrics(sims, cpi):
    """Official-style loop over queries (argsort), for float scores without ties."""
    n_img = sims.shape[0]
    i2t = [min(np.flatnonzero(np.argsort(-sims[i]) == j)[0] for j in range(cpi * i, cpi * i + cpi))
           for i in range(n_img)]
    t2i = [np.flatnonzero(np.argsort(-sims[:, c]) == c // cpi)[0] for c in range(sims.shape[1])]
    out = {}
    for name, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * np.mean(ranks < k)
        out[f"{name}_medr"] = np.floor(np.median(ranks)) + 1
        out[f"{name}_meanr"] = ranks.mean() + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def test_eval_writes_json_and_sims_matching_unsharded_reference(trained, tiny_precomp, tmp_path, capsys):
    path, model = trained
    data_path, data_name = tiny_precomp
    sims_file, json_file = tmp_path / "sims.npy", tmp_path / "m.json"
    code, out, err = _run(["--model_path", path, "--data_path", data_path, "--data_name", data_name,
                           "--split", "test", "--device", "cpu", "--workers", "0", "--rows_per_block", "40",
                           "--save_sims", str(sims_file),
                           "--json", str(json_file)], capsys)
    assert code == 0, err
    sims = np.load(sims_file, allow_pickle=False)
    assert sims.dtype == np.float32 and sims.shape == (10, 50)
    split = open_split(data_path, data_name, "test")
    reference = _reference_scores(model, load_tokenizer(model.bert_path), split)
    np.testing.assert_allclose(sims, reference, rtol=1e-5, atol=1e-5)
    results = json.load(open(json_file))
    assert results["all"] == pytest.approx(_loop_metrics(sims, 5))
    assert results["n_images"] == 10 and results["captions_per_image"] == 5
    assert "image-to-text" in out and f"{results['all']['rsum']:6.1f}" in out


def test_ensemble_of_copies_equals_one(trained, tiny_precomp, tmp_path, capsys):
    path, _ = trained
    data_path, data_name = tiny_precomp
    sims_file = tmp_path / "sims.npy"
    base = ["--data_path", data_path, "--data_name", data_name, "--split", "testall", "--device", "cpu",
            "--workers", "0", "--fold5", "--fold_images", "2", "--no_progress"]
    run_main(eval_cli.main, base + ["--model_path", path, "--save_sims", str(sims_file),
                                    "--json", str(tmp_path / "model.json")])
    run_main(eval_cli.main, ["--ensemble", str(sims_file), str(sims_file), "--fold5", "--fold_images", "2",
                             "--json", str(tmp_path / "two.json")])
    run_main(eval_cli.main, base + ["--model_path", path, "--ensemble", str(sims_file),
                                    "--json", str(tmp_path / "mixed.json")])
    model_results = json.load(open(tmp_path / "model.json"))
    assert set(model_results) >= {"all", "folds", "fold_mean"} and len(model_results["folds"]) == 5
    for other in ("two.json", "mixed.json"):
        results = json.load(open(tmp_path / other))
        assert len(results["folds"]) == 5
        for ours, expected in zip([results["all"], results["fold_mean"], *results["folds"]],
                                  [model_results["all"], model_results["fold_mean"], *model_results["folds"]]):
            assert ours == pytest.approx(expected)


def _official_checkpoint(model, path):
    """The same weights in the official release's layout (key names as in official_parts in tests/helpers.py)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    d = EMBED
    image = {"fc.weight": sd["img_enc.fc.weight"], "fc.bias": sd["img_enc.fc.bias"],
             "mlp.layers.0.weight": sd["img_enc.mlp_in.weight"], "mlp.layers.0.bias": sd["img_enc.mlp_in.bias"],
             "mlp.layers.1.weight": sd["img_enc.mlp_out.weight"], "mlp.layers.1.bias": sd["img_enc.mlp_out.bias"]}
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        image[f"mlp.bns.0.{name}"] = sd[f"img_enc.mlp_bn.{name}"]
    image.update({"mlp.bns.1.weight": torch.ones(d), "mlp.bns.1.bias": torch.zeros(d),
                  "mlp.bns.1.running_mean": torch.zeros(d), "mlp.bns.1.running_var": torch.ones(d),
                  "mlp.bns.1.num_batches_tracked": torch.tensor(0)})
    text = {k[len("txt_enc."):]: v for k, v in sd.items() if k.startswith("txt_enc.bert.")}
    text.setdefault("bert.embeddings.position_ids", torch.arange(64).unsqueeze(0))
    text.update({"linear.weight": sd["txt_enc.proj.weight"], "linear.bias": sd["txt_enc.proj.bias"]})
    sim = {"weights.weight": sd["sim.E"], "sim_map.weight": sd["sim.lam"].view(1, d),
           "temp_learnable.weight": sd["sim.log_t_mask"].view(1, 1),
           "temp_scale.weight": sd["sim.log_t_attn"].view(1, 1), "sim_eval.weight": torch.randn(1, d)}
    ours = ("device", "amp", "threads", "bert_path", "seed", "mask_padded_regions", "sim")
    options = default_options(embed_size=model.config.embed_size, img_dim=model.config.img_dim)
    opt = argparse.Namespace(**{k: v for k, v in vars(options).items() if k not in ours})
    write_official_checkpoint(path, [image, text, sim], opt)


def test_official_checkpoint_end_to_end(trained, tiny_bert_dir, tiny_precomp, tmp_path, capsys):
    path, model = trained
    data_path, data_name = tiny_precomp
    official = str(tmp_path / "official.pth")
    _official_checkpoint(model, official)
    common = ["--data_path", data_path, "--data_name", data_name, "--split", "test", "--device", "cpu",
              "--workers", "0", "--no_progress"]
    run_main(eval_cli.main, common + ["--model_path", path, "--save_sims", str(tmp_path / "ours.npy")])
    code, out, err = _run(common + ["--model_path", official, "--bert_path", tiny_bert_dir,
                                    "--save_sims", str(tmp_path / "official.npy")], capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "official.npy"), np.load(tmp_path / "ours.npy"),
                               rtol=1e-6, atol=1e-6)


def test_bf16_amp_keeps_scores_close(trained, tiny_precomp, tmp_path, capsys):
    path, _ = trained
    data_path, data_name = tiny_precomp
    common = ["--model_path", path, "--data_path", data_path, "--data_name", data_name, "--device", "cpu",
              "--workers", "0", "--no_progress"]
    run_main(eval_cli.main, common + ["--save_sims", str(tmp_path / "f32.npy")])
    run_main(eval_cli.main, common + ["--amp", "bf16", "--storage", "bfloat16",
                                      "--save_sims", str(tmp_path / "bf16.npy")])
    f32, bf16 = np.load(tmp_path / "f32.npy"), np.load(tmp_path / "bf16.npy")
    assert not np.array_equal(f32, bf16)  # really ran in bf16
    np.testing.assert_allclose(bf16, f32, rtol=0, atol=0.05 * np.abs(f32).max())


def test_user_errors_are_one_line(trained, tiny_precomp, tmp_path, capsys):
    path, _ = trained
    data_path, data_name = tiny_precomp
    code, out, err = _run(["--model_path", path, "--data_path", str(tmp_path / "nowhere"),
                           "--data_name", data_name, "--device", "cpu"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    code, _, err = _run(["--ensemble", str(bad)], capsys)
    assert code == 2 and "bad.npy" in err and err.count("\n") == 1
    code, _, err = _run(["--model_path", str(tmp_path / "missing.pth")], capsys)
    assert code == 2 and "missing.pth" in err


def test_sharded_model_scores_equal_one_call(trained, tiny_precomp):
    _, model = trained
    data_path, data_name = tiny_precomp
    split = open_split(data_path, data_name, "dev")
    from lib.data.precomp import CaptionTokenizer
    encoder = CaptionTokenizer(load_tokenizer(model.bert_path), 64)
    img_emb, captions = scoring.encode_split(model, split, encoder, batch_size=4, progress=False)
    assert img_emb.shape == (10, 36, EMBED) and len(captions) == 50
    with torch.no_grad():
        padded, lens = captions.block(0, len(captions))
        whole = model.forward_sim(img_emb, padded, lens).numpy()
    sharded = scoring.model_sims(model, img_emb, captions, rows_per_block=30, progress=False)
    np.testing.assert_allclose(sharded, whole, rtol=1e-5, atol=1e-6)
    sims, values = scoring.evaluate_split(model, split, encoder, batch_size=7, progress=False)
    np.testing.assert_allclose(sims, whole, rtol=1e-5, atol=1e-6)
    assert values["rsum"] == pytest.approx(_loop_metrics(whole, 5)["rsum"])


def test_scripts_run_as_commands(trained, tiny_precomp):
    path, _ = trained
    data_path, _ = tiny_precomp
    demo = os.path.join(data_path, "demo_precomp")
    coco = os.path.join(os.path.dirname(path), "coco_precomp")
    if not os.path.exists(coco):
        os.symlink(demo, coco)
    result = run_command([sys.executable, os.path.join(ROOT, "testall.py"), "--model_path", path,
                          "--data_path", os.path.dirname(path), "--device", "cpu", "--workers", "0",
                          "--fold_images", "2", "--no_progress"], cwd=ROOT, timeout=300)
    for label in ("fold 0", "fold 4", "5-fold mean", "coco_precomp testall all"):
        assert label in result.out
    result = run_command([sys.executable, os.path.join(ROOT, "test.py"), "--model_path", path,
                          "--data_path", os.path.dirname(path), "--device", "cpu"], expect=2, cwd=ROOT, timeout=300)
    assert result.err.startswith("error: ") and "f30k_precomp" in result.err


@pytest.fixture
def no_scoring(monkeypatch):
    """Make any encoding of a split fail the test: the error must come before the work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the split was encoded before the error")
    monkeypatch.setattr(scoring, "encode_split", refuse)


@pytest.mark.parametrize("option", ["--json", "--save_sims"])
def test_eval_output_in_missing_folder_fails_before_scoring(checkpoint, tiny_precomp, tmp_path, capsys,
                                                            no_scoring, option):
    target = tmp_path / "no-such-folder" / "out.file"
    code, out, err = run_eval(["--model_path", checkpoint, "--data_path", tiny_precomp[0],
                               "--data_name", tiny_precomp[1], "--device", "cpu", option, str(target)], capsys)
    assert code == 2 and err == f"error: {option} {target}: folder {target.parent} does not exist\n"


def test_fold_count_checked_before_scoring_and_writing(checkpoint, tiny_precomp, tmp_path, capsys, no_scoring):
    sims = tmp_path / "sims.npy"
    code, _, err = run_eval(["--model_path", checkpoint, "--data_path", tiny_precomp[0],
                             "--data_name", tiny_precomp[1], "--split", "testall", "--device", "cpu",
                             "--fold5", "--save_sims", str(sims), "--json", str(tmp_path / "m.json")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "5 folds of 1000 images need at least 5000 images, the scores hold 10" in err
    assert "--fold_images (at most 2)" in err and "--no-fold5" in err
    assert os.listdir(tmp_path) == []


def test_nan_evaluation_features_name_the_file_and_image(checkpoint, tiny_precomp, tmp_path, capsys):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "test", 4)
    code, _, err = run_eval(["--model_path", checkpoint, "--data_path", data_path, "--data_name", data_name,
                             "--device", "cpu", "--workers", "0", "--batch_size", "3", "--no_progress"], capsys)
    assert code == 2 and err == (f"error: {folder / 'test_ims.npy'}: image 4 holds NaN or infinite region features; "
                                 f"python check_data.py --data_path {data_path} --data_name {data_name} "
                                 "checks every split\n")


@pytest.mark.parametrize("option, value", [("--batch_size", "0"), ("--workers", "-1"), ("--fold_images", "0"),
                                           ("--rows_per_block", "-1")])
def test_bad_evaluation_numbers_fail_in_one_line(checkpoint, capsys, no_scoring, option, value):
    code, _, err = run_eval(["--model_path", checkpoint, "--device", "cpu", option, value], capsys)
    assert code == 2 and err.startswith(f"error: {option} {value}: must be ") and err.count("\n") == 1


def test_ensemble_messages_name_the_file(tmp_path, capsys):
    good, short, broken = tmp_path / "good.npy", tmp_path / "short.npy", tmp_path / "broken.npy"
    np.save(good, np.ones((2, 10), np.float32))
    np.save(short, np.ones((2, 5), np.float32))
    with_nan = np.ones((2, 10), np.float32)
    with_nan[1, 6] = np.nan
    np.save(broken, with_nan)
    code, _, err = run_eval(["--ensemble", str(good), str(short)], capsys)
    assert code == 2
    assert err == f"error: {short}: score matrix of shape (2, 5) cannot be ensembled with {good} of shape (2, 10)\n"
    code, _, err = run_eval(["--ensemble", str(good), str(broken)], capsys)
    assert code == 2
    assert err == f"error: {broken}: score matrix holds NaN or infinite values (first at image 1, caption 6)\n"


def test_testall_folds_can_be_turned_off():
    parser = evaluation_parser("testall", fold5=True)
    assert parser.parse_args([]).fold5 is True and parser.parse_args(["--no-fold5"]).fold5 is False
    assert "--fold5, --no-fold5" in help_text(parser) and "(default: True)" in help_text(parser)


def test_metrics_are_rounded_in_json(tmp_path, capsys):
    assert metrics.rounded({"a": [90.60000000000001, {"b": 1 / 3}], "n": 7, "s": "x"}) == \
        {"a": [90.6, {"b": 0.333}], "n": 7, "s": "x"}
    sims = np.random.default_rng(0).standard_normal((3, 15)).astype(np.float32)
    np.save(tmp_path / "s.npy", sims)
    run_main(eval_cli.main, ["--ensemble", str(tmp_path / "s.npy"), "--json", str(tmp_path / "m.json")])
    saved = json.loads((tmp_path / "m.json").read_text())["all"]
    exact = metrics.evaluate_sims(sims, 5)[0]
    assert any(round(v, 3) != v for v in exact.values())  # something needed rounding
    assert saved == {key: round(value, 3) for key, value in exact.items()}


def test_ensemble_of_one_file_twice_warns(tmp_path, caplog, capsys):
    sims = np.eye(4, 20, dtype=np.float32)
    path = str(tmp_path / "a.npy")
    score_files.save_score_file(sims, path)
    other_spelling = os.path.join(str(tmp_path), ".", "a.npy")
    with caplog.at_level(logging.WARNING):
        assert eval_cli.main(["--ensemble", path, other_spelling, "--device", "cpu"]) == 0
    assert caplog.messages == [(f"warning: --ensemble names {path} 2 times: it counts that many times in the "
                               "average")]
    capsys.readouterr()
    caplog.clear()
    score_files.save_score_file(sims, str(tmp_path / "b.npy"))
    with caplog.at_level(logging.WARNING):
        assert eval_cli.main(["--ensemble", path, str(tmp_path / "b.npy"), "--device", "cpu"]) == 0
    assert caplog.messages == []


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


def test_eval_json_on_a_full_disk_leaves_no_partial_file(tmp_path, full_disk):
    np.save(tmp_path / "in.npy", np.eye(10, 50, dtype=np.float32))
    full_disk("m.json", 64)
    run = run_main(eval_cli.main, ["--ensemble", str(tmp_path / "in.npy"), "--json", str(tmp_path / "m.json")],
                   expect=None)
    assert one_error_line(run).startswith(f"{tmp_path / 'm.json'}: not written, disk full (")
    assert os.listdir(tmp_path) == ["in.npy"]
