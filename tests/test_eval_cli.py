"""eval.py / test.py / testall.py end to end on the tiny synthetic data, with a
briefly trained checkpoint of ours and the same weights in the official layout."""
import argparse
import json
import os
import sys

import numpy as np
import pytest
import torch
from builders import checkpoint_of, model_from_options, trainer_for
from official_format import write_official_checkpoint
from script_runs import run_command, run_main

import eval as eval_cli
from lib.cli.options import default_options
from lib.data.precomp import CaptionEncoder, open_split, train_loader
from lib.evaluation import scoring
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    loader = train_loader(files, CaptionEncoder(load_tokenizer(tiny_bert_dir), 64), batch_size=8)
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


def _reference_scores(model, tokenizer, split):
    """All images and captions in one batch, one forward_sim call: (n_img, n_cap)."""
    ids = [torch.tensor(tokenizer(c)["input_ids"]) for c in split.captions]
    lengths = torch.tensor([len(x) for x in ids])
    captions = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True)
    model.val_start()
    with torch.no_grad():
        img_emb, cap_emb, cap_lens = model.forward_emb(torch.from_numpy(np.array(split.images)),
                                                       captions, lengths)
        return model.forward_sim(img_emb, cap_emb, cap_lens).numpy()


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
    """The same weights in the official release's layout (key names as in tests/official_format.py)."""
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
    from lib.data.precomp import CaptionEncoder
    encoder = CaptionEncoder(load_tokenizer(model.bert_path), 64)
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
