"""Behaviours no other test pinned (issue 17): one-line errors, warnings, and the mutation survivors.

Each test of the last part names the one-line bug it catches ("catches: ...").
"""
import errno
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from builders import train_from_options
from test_training import make_opt
from torch.optim.optimizer import register_optimizer_step_pre_hook

import analyze
import convert_features
import eval as eval_cli
import retrieve
import train as train_script
from lib.analysis import statistics as analysis
from lib.data import butd
from lib.data.precomp import CaptionEncoder, ImageDataset, open_split
from lib.errors import XDimError
from lib.evaluation import encoding, score_files, scoring
from lib.formats.checkpoint import load_checkpoint
from lib.model.bert import load_tokenizer
from lib.model.xdim_model import XDimModel
from lib.retrieval.index import two_stage_protocol
from lib.training import trainer as training


def run_training(opt):
    """lib.training.trainer.train from a train.py options namespace, as train.py runs it -> its result dict."""
    return train_from_options(opt)


@pytest.fixture(autouse=True)
def one_thread():
    """Train and score on one intra-op thread (shared cores); give the next test its own count back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_precomp, tiny_bert_dir):
    """Options of a finished 1-epoch run on the tiny data (its model_name holds model_best.pth)."""
    opt = make_opt(tmp_path_factory.mktemp("trained"), tiny_precomp, tiny_bert_dir, num_epochs=1)
    run_training(opt)
    return opt


def copy_data(tiny_precomp, tmp_path):
    """A writable copy of the tiny precomp data -> its split folder."""
    data_path, data_name = tiny_precomp
    shutil.copytree(data_path, tmp_path / "data")
    return tmp_path / "data" / data_name


def last_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- one line instead of errno text

def test_full_disk_at_a_checkpoint_save_is_one_line_naming_the_file(tmp_path, tiny_precomp, tiny_bert_dir,
                                                                     monkeypatch, capsys):
    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    opt = make_opt(tmp_path, tiny_precomp, tiny_bert_dir, num_epochs=1)
    argv = ["--data_path", opt.data_path, "--data_name", opt.data_name, "--img_dim", str(opt.img_dim),
            "--bert_path", tiny_bert_dir, "--embed_size", "32", "--batch_size", "32", "--workers", "0",
            "--device", "cpu", "--num_epochs", "1", "--model_name", opt.model_name,
            "--logger_name", opt.logger_name]
    assert train_script.main(argv) == 2
    best = os.path.join(opt.model_name, "model_best.pth")  # written first; no checkpoint.pth to resume yet
    message = last_error(capsys)
    assert message.startswith(f"error: {best}: not written, disk full (") and "\n" not in message
    assert message.endswith("free some space and run again (any previous model_best.pth is intact)")
    assert not os.path.exists(opt.model_name)  # no partial file, no lock, no empty folder left


def test_train_script_turns_any_os_error_into_one_line(monkeypatch, capsys):
    def fails(model_config, train_config, runtime):
        raise OSError(errno.EACCES, "Permission denied", "runs/x/events.out")

    monkeypatch.setattr(training, "train", fails)
    assert train_script.main([]) == 2
    assert capsys.readouterr().err == "error: runs/x/events.out: permission denied\n"


@pytest.mark.parametrize("content, message", [
    (None, "is a folder, give a text file with one query per line"),
    ("", "is empty, give one query per line"),
    ("\n", "is empty, give one query per line"),
])
def test_queries_file_problems_name_the_option(tmp_path, capsys, content, message):
    path = tmp_path / "questions"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content, encoding="utf-8")
    # Checked before the index or the model is read: neither exists here.
    assert retrieve.main(["query", "--index", str(tmp_path / "no_index"), "--queries", str(path)]) == 2
    assert capsys.readouterr().err == f"error: --queries {path}: {message}\n"


def test_missing_queries_file_names_the_option(tmp_path, capsys):
    path = tmp_path / "nope.txt"
    assert retrieve.main(["query", "--index", str(tmp_path), "--queries", str(path)]) == 2
    assert capsys.readouterr().err == f"error: --queries {path}: no such file\n"


def test_out_naming_a_file_is_refused_by_the_converter_and_analyze(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a thesis", encoding="utf-8")
    assert convert_features.main(["--npz_dir", str(tmp_path), "--out", str(taken), "--split", "s"]) == 2
    assert capsys.readouterr().err == f"error: --out {taken}: {taken} is a file, not a folder\n"
    # analyze.py checks --out before it loads the (here missing) checkpoint.
    assert analyze.main(["--model_path", str(tmp_path / "none.pth"), "--out", str(taken / "figures")]) == 2
    assert capsys.readouterr().err == f"error: --out {taken / 'figures'}: {taken} is a file, not a folder\n"
    assert taken.read_text(encoding="utf-8") == "a thesis"


def test_folder_as_model_path_says_so_and_suggests_model_best(trained, tmp_path, capsys):
    with pytest.raises(XDimError) as error:
        load_checkpoint(str(tmp_path))
    assert str(error.value) == f"{tmp_path}: is a folder, not a checkpoint file, give the checkpoint file inside it"
    folder = trained.model_name
    assert eval_cli.main(["--model_path", folder, "--device", "cpu"]) == 2
    assert last_error(capsys) == (f"error: {folder}: is a folder, not a checkpoint file; "
                                  f"did you mean {os.path.join(folder, 'model_best.pth')}?")


# ---------------------------------------------------------------- warnings instead of silence

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


def replace_lines(path, lines):
    """Rewrite caption lines {line number (from 1): text} of a caption file."""
    captions = path.read_text(encoding="utf-8").splitlines()
    for number, text in lines.items():
        captions[number - 1] = text
    path.write_text("\n".join(captions) + "\n", encoding="utf-8")
    return captions


def test_words_outside_the_vocabulary_warn_once_per_split(tmp_path, tiny_precomp, tiny_bert_dir, caplog):
    folder = copy_data(tiny_precomp, tmp_path)
    captions = (folder / "test_caps.txt").read_text(encoding="utf-8").splitlines()
    replace_lines(folder / "test_caps.txt", {3: captions[2] + " \U0001F436", 7: "\U0001F600 " + captions[6]})
    encoder = CaptionEncoder(load_tokenizer(tiny_bert_dir), 64)
    split = open_split(str(tmp_path / "data"), folder.name, "test")
    with caplog.at_level(logging.WARNING, logger="lib.data"):
        encoder.check_captions(split)
    assert caplog.messages == [
        (f"warning: {folder / 'test_caps.txt'}: 2 of 50 captions hold characters outside the BERT vocabulary, "
        f"read as [UNK] (first at line 3: {(captions[2] + ' ' + chr(0x1F436))[:60]})")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lib.data"):
        encoder.check_captions(open_split(*tiny_precomp, "test"))
    assert caplog.messages == []


def test_training_start_warnings_reach_train_log(tmp_path, tiny_precomp, tiny_bert_dir):
    folder = copy_data(tiny_precomp, tmp_path)
    captions = (folder / "train_caps.txt").read_text(encoding="utf-8").splitlines()
    long_caption = " ".join([captions[4]] * 20)  # far beyond the tiny BERT's 64 positions
    replace_lines(folder / "train_caps.txt", {3: captions[2] + " \U0001F436", 5: long_caption})
    opt = make_opt(tmp_path, (str(tmp_path / "data"), folder.name), tiny_bert_dir, num_epochs=1)
    run_training(opt)
    with open(os.path.join(opt.logger_name, "train.log"), encoding="utf-8") as f:
        log = f.read()
    assert (f"warning: {folder / 'train_caps.txt'}: 1 of 160 captions hold characters outside the BERT "
            "vocabulary, read as [UNK] (first at line 3: ") in log
    assert f"caption truncated to the BERT's 64 positions (further truncations are not reported): {long_caption[:80]}" in log


@pytest.mark.parametrize("dtype, warns", [(np.float16, False), (np.float64, True)])
def test_half_and_double_features_are_read_as_float32(tmp_path, tiny_precomp, caplog, dtype, warns):
    folder = copy_data(tiny_precomp, tmp_path)
    original = np.load(folder / "test_ims.npy")
    stored = (original * np.float32(1 + 2 ** -20)).astype(dtype)  # float64 values float32 cannot hold
    np.save(folder / "test_ims.npy", stored)
    with caplog.at_level(logging.WARNING, logger="lib.data"):
        split = open_split(str(tmp_path / "data"), folder.name, "test", img_dim=original.shape[2])
    expected = [(f"warning: {folder / 'test_ims.npy'}: float64 features are rounded to float32 when read "
                "(float32 or float16 files hold the same and take less disk)")]
    assert caplog.messages == (expected if warns else [])
    image, index = ImageDataset(split)[2]
    assert index == 2 and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(stored[2].astype(np.float32)))


# ---------------------------------------------------------------- the mutation survivors

def reference_fold_metrics(block):
    """R@1/5/10 both ways and rSum of a one-caption-per-image score block (n, n), by plain loops."""
    n = len(block)
    i2t = [sum(block[i, j] >= block[i, i] for j in range(n) if j != i) for i in range(n)]
    t2i = [sum(block[j, c] >= block[c, c] for j in range(n) if j != c) for c in range(n)]
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in ranks) / n
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def one_caption_scores(n=60, seed=0):
    """(n, n) scores with the true pairs a little ahead: every fold gets recalls between 0 and 100."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, n)) + 1.5 * np.eye(n)).astype(np.float32)


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


def test_fold5_shortlist_with_one_caption_per_image():
    # catches: two_stage_protocol's fold_slices without captions_per_image.
    sims = one_caption_scores()
    one_hot = np.eye(60, dtype=np.float32)  # each item's global vector finds its own pair first
    results = two_stage_protocol(sims, one_hot, one_hot, 1, captions_per_image=1, fold5=True, fold_images=12)
    assert len(results["folds"]) == 5
    for fold in results["folds"]:
        assert fold["i2t_r1"] == fold["t2i_r1"] == 100.0
    # Shortlisting a whole fold changes nothing: the folds of the one-stage protocol.
    whole = two_stage_protocol(sims, one_hot, one_hot, 12, captions_per_image=1, fold5=True, fold_images=12)
    for k, fold in enumerate(whole["folds"]):
        for key, value in reference_fold_metrics(sims[12 * k:12 * k + 12, 12 * k:12 * k + 12]).items():
            assert fold[key] == pytest.approx(value, abs=1e-9), (k, key)


def test_ensemble_divides_by_the_number_of_matrices():
    # catches: the sum divided by the number of images (rows) instead of matrices.
    rng = np.random.default_rng(1)
    matrices = [rng.standard_normal((2, 10)).astype(np.float32) for _ in range(3)]
    expected = np.mean(np.stack(matrices).astype(np.float64), axis=0)
    np.testing.assert_allclose(score_files.ensemble_sims(matrices), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_storage_dtype_holds_the_image_and_caption_embeddings(trained, tiny_precomp, storage):
    # catches: encode_images allocating float32 whatever --storage says.
    model = XDimModel.from_checkpoint(os.path.join(trained.model_name, "model_best.pth"))
    split = open_split(*tiny_precomp, "test")
    encoder = scoring.caption_encoder(model)
    img32, cap32 = scoring.encode_split(model, split, encoder, batch_size=4, progress=False)
    img, cap = scoring.encode_split(model, split, encoder, batch_size=4, storage=storage, progress=False)
    dtype = encoding.STORAGE_DTYPES[storage]
    assert img32.dtype == cap32.tokens.dtype == torch.float32
    assert img.dtype == cap.tokens.dtype == dtype
    assert torch.equal(img, img32.to(dtype)) and torch.equal(cap.tokens, cap32.tokens.to(dtype))


def region_record(image_id, n_boxes, dim=4):
    rng = np.random.default_rng(n_boxes)
    return butd.RegionRecord(image_id, 640, 480, rng.uniform(0, 9, (n_boxes, 4)).astype(np.float32),
                             rng.standard_normal((n_boxes, dim)).astype(np.float32), f"record {image_id}")


def test_converter_counts_an_image_of_exactly_36_boxes_as_neither_padded_nor_cut(tmp_path):
    # catches: `padded += len(features) <= regions` (or `truncated += ... >= regions`).
    records = [region_record("exact", 36), region_record("short", 35), region_record("long", 37)]
    summary = butd.convert(records, 3, str(tmp_path), "s", regions=36, progress=False)
    assert (summary.padded, summary.truncated) == (1, 1)
    info = np.load(tmp_path / "s_image_info.npy")
    assert info[:, 2].tolist() == [36, 35, 36]


def test_participation_ties_at_the_top_k_boundary_go_to_the_lower_dimension():
    # catches: an unstable or reversed sort (ties then go to a higher or arbitrary dimension).
    d = 64
    vectors = np.zeros((2, d))
    vectors[0, 40] = 1.0             # then 63 dimensions tied at 0: top 3 = 40, 0, 1
    vectors[1, [5, 9, 30, 50]] = 0.5  # four tied for three places: 5, 9, 30
    probabilities = analysis.participation_probabilities(vectors, 3)
    expected = np.zeros(d)
    expected[[40, 0, 1]] += 0.5
    expected[[5, 9, 30]] += 0.5
    np.testing.assert_array_equal(probabilities, expected)
    # The concept report's top-k: equal probabilities at the boundary, lower dimension first.
    assert analysis.rank_dimensions(probabilities)[:3].tolist() == [0, 1, 5]


def scripted_validation(rsums):
    """A stand-in for lib.evaluation.scoring.validate returning the next rSum of `rsums` each call."""
    values = iter(rsums)

    def validate(model, dev_files, caption_encoder, **kwargs):
        rsum = next(values)
        return {key: rsum / 6 for key in training.METRIC_TAGS} | {"rsum": rsum}
    return validate


def test_mid_epoch_best_records_its_epoch_and_resumes_it(tmp_path, tiny_precomp, tiny_bert_dir, monkeypatch):
    # catches: every save recording epoch + 1 (a mid-epoch best would skip the rest of its epoch).
    # 5 steps, validation at iterations 2 and 4 (mid-epoch) and 5 (end): the best is iteration 4's.
    monkeypatch.setattr(training, "validate", scripted_validation([10.0, 50.0, 20.0]))
    opt = make_opt(tmp_path, tiny_precomp, tiny_bert_dir, num_epochs=1, val_step=2)
    run_training(opt)
    best = load_checkpoint(os.path.join(opt.model_name, "model_best.pth"))
    last = load_checkpoint(os.path.join(opt.model_name, "checkpoint.pth"))
    assert (best["epoch"], best["iterations"], best["best_rsum"]) == (0, 4, 50.0)
    assert (last["epoch"], last["iterations"]) == (1, 5)
    monkeypatch.setattr(training, "validate", scripted_validation([1.0, 2.0, 3.0]))
    resumed = make_opt(tmp_path, tiny_precomp, tiny_bert_dir, name="resumed", num_epochs=1, val_step=2,
                       resume=os.path.join(opt.model_name, "model_best.pth"))
    assert run_training(resumed)["iterations"] == 4 + 5  # epoch 0 again, whole


def test_grad_clip_clips_the_gradient_norm_to_its_value(tmp_path, tiny_precomp, tiny_bert_dir):
    # catches: clipping to the default 2.0 (or not at all) whatever --grad_clip says.
    norms = []

    def record_norm(optimizer, args, kwargs):
        grads = [p.grad.double() for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(record_norm)
    try:
        run_training(make_opt(tmp_path, tiny_precomp, tiny_bert_dir, num_epochs=1, grad_clip=0.05))
    finally:
        handle.remove()
    assert len(norms) == 5
    assert norms == pytest.approx([0.05] * 5, rel=1e-4)
