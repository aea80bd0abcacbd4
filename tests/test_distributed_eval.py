"""eval.py, validation and retrieve.py build shared by two CPU processes (gloo) against one process.

Every worker joins a file-rendezvous group (test_distributed.join_group) and runs the
script's own main() as a torchrun process would; its exit code, stdout and stderr are
saved for the test to compare with a run in this one process.
"""
import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch

import eval as eval_cli
import retrieve
from lib.data.precomp import CaptionEncoder, open_split
from lib.errors import XDimError
from lib.evaluation import scoring
from lib.formats.checkpoint import make_checkpoint, save_checkpoint
from lib.model.bert import load_tokenizer
from lib.runtime import distributed
from lib.training.trainer import build_model
from lib.cli.options import default_options
from test_distributed import join_group, spawn

# Failing tests must fail within this bound, not hang: the file rendezvous's collective
# timeout (join_group) is 120 s, spawn's own limit below.
SPAWN_LIMIT_S = 240


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """An untrained, seeded checkpoint on the tiny data (distinct scores, no ties)."""
    opt = default_options(embed_size=32, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=tiny_precomp[0], data_name=tiny_precomp[1], seed=5)
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pth")
    save_checkpoint(make_checkpoint(build_model(opt), 0, 0.0), path)
    return path


def run_captured(main, argv):
    """-> {'code', 'out', 'err'} of main(argv) with its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def fail_on_rank_1(step):
    """Make `step` ('score' or 'gallery') raise an XDimError in rank 1 only."""
    if distributed.rank() != 1:
        return

    def broken(*args, **kwargs):
        raise XDimError("injected failure of rank 1")
    if step == "score":
        scoring.model_sims = broken
    elif step == "gallery":
        from lib.retrieval import shortlist
        shortlist.MeanPooling.images = broken


def script_worker(rank, world, out_dir, script, argv, failure):
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    try:
        fail_on_rank_1(failure)
        result = run_captured({"eval": eval_cli.main, "retrieve": retrieve.main}[script], argv)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        distributed.cleanup()


def two_processes(tmp_path, script, argv, failure=None):
    """Run a script's main on 2 processes -> [rank 0's result, rank 1's]."""
    folder = tmp_path / "procs"
    folder.mkdir()
    spawn(script_worker, (2, str(folder), script, argv, failure), timeout=SPAWN_LIMIT_S)
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


def one_process(main, argv):
    """The reference: main(argv) here, on one thread like each worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_captured(main, argv)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- shares

def test_shares_are_whole_batches_in_rank_order(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    # 10 images in batches of 4: 3 batches, rank 0 takes 1 (4 rows), rank 1 two (6 rows).
    assert distributed.shard_sizes(10, 4) == [4, 6]
    # 50 captions: 13 batches -> 6 and 7 batches, the last one short.
    assert distributed.shard_sizes(50, 4) == [24, 26]
    # Fewer batches than processes: single items.
    assert distributed.shard_sizes(3, 128) == [1, 2]
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.shard(10, 4) == range(4, 10)
    with pytest.raises(XDimError, match=r"^1 images of x cannot be shared by 2 processes; launch at most 1$"):
        distributed.shard(1, 4, "images of x")


def test_one_process_shares_and_gathers_are_identities():
    assert distributed.shard(7, 3) == range(7)
    tokens, lengths = torch.ones(5, 2), torch.tensor([2, 3])
    assert distributed.all_gather_ragged(tokens, lengths) == (tokens, lengths)
    assert distributed.gather_to_main(tokens, [5]) is tokens
    with pytest.raises(ValueError, match="kept"):  # together() re-raises in one process
        with distributed.together():
            raise ValueError("kept")


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_bad_timeout_setting_is_one_line(monkeypatch, value):
    monkeypatch.setenv("XDIM_TIMEOUT_MINUTES", value)
    with pytest.raises(XDimError, match=rf"^XDIM_TIMEOUT_MINUTES='{value}': give a positive number of minutes$"):
        distributed.collective_timeout()


def test_timeout_setting(monkeypatch):
    monkeypatch.delenv("XDIM_TIMEOUT_MINUTES", raising=False)
    assert distributed.collective_timeout().total_seconds() == 30 * 60
    monkeypatch.setenv("XDIM_TIMEOUT_MINUTES", "0.5")
    assert distributed.collective_timeout().total_seconds() == 30


# ---------------------------------------------------------------- eval.py

def eval_argv(checkpoint, tiny_precomp, out, *extra):
    return ["--model_path", checkpoint, "--data_path", tiny_precomp[0], "--data_name", tiny_precomp[1],
            "--split", "dev", "--device", "cpu", "--batch_size", "4", "--workers", "0", "--threads", "1",
            "--no_progress", "--save_sims", str(out / "sims.npy"), "--json", str(out / "metrics.json"), *extra]


def test_eval_on_two_processes_equals_one(tmp_path, checkpoint, tiny_precomp):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    # dev: 10 images and 50 captions in batches of 4: the processes hold 4 and 6 images,
    # 24 and 26 captions, so both the caption gather and the row gather are uneven.
    reference = one_process(eval_cli.main, eval_argv(checkpoint, tiny_precomp, tmp_path / "one", "--shortlist", "3"))
    ranks = two_processes(tmp_path, "eval", eval_argv(checkpoint, tiny_precomp, tmp_path / "two", "--shortlist", "3"))
    assert reference["code"] == 0 and [r["code"] for r in ranks] == [0, 0]
    assert ranks[0]["out"] == reference["out"] and "two stages" in reference["out"]
    assert ranks[1]["out"] == "" and ranks[0]["err"] == ranks[1]["err"] == ""
    one, two = np.load(tmp_path / "one" / "sims.npy"), np.load(tmp_path / "two" / "sims.npy")
    assert one.shape == two.shape == (10, 50)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=0)
    assert len(np.unique(one)) == one.size  # no ties that rounding could reorder
    metrics_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics_two == metrics_one and metrics_one["shortlist"]["k"] == 3


def bad_split(tmp_path, tiny_precomp, image):
    """A copy of the tiny data whose dev image `image` holds a NaN."""
    data_path = tmp_path / "data"
    shutil.copytree(tiny_precomp[0], data_path)
    ims = data_path / tiny_precomp[1] / "dev_ims.npy"
    features = np.load(ims)
    features[image, 3, 1] = np.nan
    np.save(ims, features)
    return str(data_path), str(ims)


def test_bad_image_in_rank_1_share_stops_both_processes(tmp_path, checkpoint, tiny_precomp):
    data_path, ims = bad_split(tmp_path, tiny_precomp, image=7)  # rank 1 encodes images 4..9
    argv = eval_argv(checkpoint, (data_path, tiny_precomp[1]), tmp_path)
    ranks = two_processes(tmp_path, "eval", argv)
    message = f"{ims}: image 7 holds NaN or infinite region features"
    assert [r["code"] for r in ranks] == [2, 2]
    assert ranks[1]["err"] == f"error: {message}\n"
    assert ranks[0]["err"] == f"error: {message} (in process 1)\n"
    assert ranks[0]["out"] == ranks[1]["out"] == ""
    assert not (tmp_path / "sims.npy").exists() and not (tmp_path / "metrics.json").exists()


def test_exception_in_rank_1_while_scoring_stops_both_processes(tmp_path, checkpoint, tiny_precomp):
    ranks = two_processes(tmp_path, "eval", eval_argv(checkpoint, tiny_precomp, tmp_path), failure="score")
    assert [r["code"] for r in ranks] == [2, 2]
    assert ranks[1]["err"] == "error: injected failure of rank 1\n"
    assert ranks[0]["err"] == "error: injected failure of rank 1 (in process 1)\n"
    assert not (tmp_path / "sims.npy").exists()


# ---------------------------------------------------------------- validation

def validate_worker(rank, world, out_dir, checkpoint, data, bert_dir):
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    try:
        model = scoring.load_model(checkpoint, device=torch.device("cpu"))
        distributed.wrap_encoders(model)  # as in training: the encoders run inside DDP
        encoder = CaptionEncoder(load_tokenizer(bert_dir), 64)
        metrics = scoring.validate(model, open_split(*data, "dev"), encoder, batch_size=3, progress=False)
        torch.save(metrics, os.path.join(out_dir, f"metrics{rank}.pt"))
    finally:
        distributed.cleanup()


def test_validation_on_two_processes_equals_one(tmp_path, checkpoint, tiny_precomp, tiny_bert_dir):
    spawn(validate_worker, (2, str(tmp_path), checkpoint, tiny_precomp, tiny_bert_dir), timeout=SPAWN_LIMIT_S)
    model = scoring.load_model(checkpoint, device=torch.device("cpu"))
    encoder = CaptionEncoder(load_tokenizer(tiny_bert_dir), 64)
    reference = scoring.validate(model, open_split(*tiny_precomp, "dev"), encoder, batch_size=3, progress=False)
    assert torch.load(tmp_path / "metrics0.pt") == reference and reference["rsum"] > 0
    assert torch.load(tmp_path / "metrics1.pt") is None


# ---------------------------------------------------------------- retrieve.py build

GALLERY_FILES = {"images": ("regions.npy", "lengths.npy", "global.npy", "faiss.index", "items.txt", "manifest.json"),
                 "captions": ("tokens.npy", "offsets.npy", "global.npy", "faiss.index", "items.txt", "manifest.json")}


def build_argv(checkpoint, split, gallery, index):
    source = split.images_path if gallery == "images" else split.captions_path
    return ["build", "--model_path", checkpoint, f"--{gallery}", source, "--index", str(index),
            "--device", "cpu", "--batch_size", "3", "--no_progress"]


@pytest.mark.parametrize("gallery", ["images", "captions"])
def test_build_on_two_processes_writes_the_one_process_index(tmp_path, checkpoint, tiny_precomp, gallery):
    # 10 images (50 captions) in batches of 3: rounds of two batches, the last round
    # with one short batch on rank 0 and none on rank 1 (images).
    split = open_split(*tiny_precomp, "dev")
    reference = one_process(retrieve.main, build_argv(checkpoint, split, gallery, tmp_path / "one"))
    ranks = two_processes(tmp_path, "retrieve", build_argv(checkpoint, split, gallery, tmp_path / "two"))
    assert reference["code"] == 0 and [r["code"] for r in ranks] == [0, 0]
    assert ranks[1]["out"] == "" and ranks[0]["out"].startswith(f"indexed {'10' if gallery == 'images' else '50'} ")
    assert sorted(os.listdir(tmp_path / "two")) == sorted(GALLERY_FILES[gallery])
    for name in GALLERY_FILES[gallery]:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert sorted(os.listdir(tmp_path)) == ["one", "procs", "two"]  # no staging folder left


def test_build_failure_in_rank_1_stops_both_and_writes_nothing(tmp_path, checkpoint, tiny_precomp):
    split = open_split(*tiny_precomp, "dev")
    ranks = two_processes(tmp_path, "retrieve", build_argv(checkpoint, split, "images", tmp_path / "index"),
                          failure="gallery")
    assert [r["code"] for r in ranks] == [2, 2]
    assert ranks[1]["err"] == "error: injected failure of rank 1\n"
    assert ranks[0]["err"] == "error: injected failure of rank 1 (in process 1)\n"
    assert sorted(os.listdir(tmp_path)) == ["procs"]
