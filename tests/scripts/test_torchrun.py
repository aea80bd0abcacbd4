"""eval.py, validation and retrieve.py build on two processes equal one process."""
import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import checkpoint_of, join_group, spawn

import eval as eval_cli
import retrieve
from lib.cli.train import default_options, train_configs
from lib.data.precomp import CaptionTokenizer, open_split
from lib.errors import XDimError
from lib.evaluation import scoring
from lib.formats.checkpoint import save_checkpoint
from lib.model.bert import load_tokenizer
from lib.model.xdim_model import XDimModel
from lib.runtime import distributed
from lib.training.trainer import build_model

# Failing tests must fail within this bound, not hang: the file rendezvous's collective
# timeout (join_group) is 120 s, spawn's own limit below.
SPAWN_LIMIT_S = 240


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """An untrained, seeded checkpoint on the tiny data (distinct scores, no ties)."""
    opt = default_options(embed_size=32, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=tiny_precomp[0], data_name=tiny_precomp[1], seed=5)
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pth")
    model = build_model(train_configs(opt)[0], tiny_bert_dir, opt.seed, "cpu", "none")
    save_checkpoint(checkpoint_of(model, opt), path)
    return path


def run_captured(main, argv):
    """-> {'code', 'out', 'err'} of main(argv) with its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


@contextlib.contextmanager
def failing_on_rank_1(step):
    """While active, `step` (None, 'score' or 'gallery') raises an XDimError in rank 1 only."""
    from lib.retrieval import shortlist
    owner, name = {"score": (scoring, "model_sims"), "gallery": (shortlist.MeanPooling, "images")}.get(step, (None, None))
    if owner is None or distributed.rank() != 1:
        yield
        return
    original = getattr(owner, name)

    def broken(*args, **kwargs):
        raise XDimError("injected failure of rank 1")
    setattr(owner, name, broken)
    try:
        yield
    finally:
        setattr(owner, name, original)


def validation_job(checkpoint, data, bert_dir):
    """scoring.split_metrics of the dev split with the encoders inside DDP, as in training."""
    model = XDimModel.from_checkpoint(checkpoint)
    network = distributed.wrap_model(model)  # noqa: F841  (alive while validating, as in training)
    encoder = CaptionTokenizer(load_tokenizer(bert_dir), 64)
    return scoring.split_metrics(model, open_split(*data, "dev"), encoder, batch_size=3, progress=False)


def jobs_worker(rank, world, out_dir, jobs):
    """Run `jobs` [(name, script, argv or validation arguments, failure)] one after the other in
    one process group (an agreed failure leaves the group usable); save each result."""
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    try:
        results = {}
        for name, script, arguments, failure in jobs:
            with failing_on_rank_1(failure):
                if script == "validate":
                    results[name] = validation_job(*arguments)
                else:
                    results[name] = run_captured({"eval": eval_cli.main, "retrieve": retrieve.main}[script],
                                                 arguments)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def two_processes(folder, jobs):
    """Run jobs on 2 processes -> {job name: [rank 0's result, rank 1's]}."""
    spawn(jobs_worker, (2, str(folder), jobs), timeout=SPAWN_LIMIT_S)
    ranks = [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]
    return {name: [r[name] for r in ranks] for name in ranks[0]}


def one_process(main, argv):
    """The reference: main(argv) here, on one thread like each worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_captured(main, argv)
    finally:
        torch.set_num_threads(threads)


def eval_argv(checkpoint, data, out, *extra):
    return ["--model_path", checkpoint, "--data_path", data[0], "--data_name", data[1],
            "--split", "dev", "--device", "cpu", "--batch_size", "4", "--workers", "0", "--threads", "1",
            "--no_progress", "--save_sims", str(out / "sims.npy"), "--json", str(out / "metrics.json"), *extra]


def build_argv(checkpoint, split, gallery, index):
    source = split.images_path if gallery == "images" else split.captions_path
    return ["build", "--model_path", checkpoint, f"--{gallery}", source, "--index", str(index),
            "--device", "cpu", "--batch_size", "3", "--no_progress"]


def bad_split(folder, tiny_precomp, image):
    """A copy of the tiny data whose dev image `image` holds a NaN -> (data_path, its dev_ims.npy)."""
    data_path = folder / "data"
    shutil.copytree(tiny_precomp[0], data_path)
    ims = data_path / tiny_precomp[1] / "dev_ims.npy"
    features = np.load(ims)
    features[image, 3, 1] = np.nan
    np.save(ims, features)
    return str(data_path), str(ims)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, checkpoint, tiny_precomp, tiny_bert_dir):
    """(folder, results by job) of the successful jobs on 2 processes, in one spawn.

    dev: 10 images and 50 captions. eval in batches of 4: the processes hold 4 and 6 images,
    24 and 26 captions, so the caption gather and the row gather are both uneven. build in
    batches of 3: rounds of two batches, the images' last round with one short batch on
    rank 0 and none on rank 1.
    """
    folder = tmp_path_factory.mktemp("shared")
    split = open_split(*tiny_precomp, "dev")
    (folder / "eval").mkdir()
    jobs = [("eval", "eval", eval_argv(checkpoint, tiny_precomp, folder / "eval", "--shortlist", "3"), None),
            ("validate", "validate", (checkpoint, tiny_precomp, tiny_bert_dir), None)]
    jobs += [(gallery, "retrieve", build_argv(checkpoint, split, gallery, folder / gallery), None)
             for gallery in ("images", "captions")]
    return folder, two_processes(folder, jobs)


@pytest.fixture(scope="module")
def failed(tmp_path_factory, checkpoint, tiny_precomp):
    """(folder, results by job, the NaN file) of jobs that fail on rank 1 only, in one spawn."""
    folder = tmp_path_factory.mktemp("failed")
    data_path, ims = bad_split(folder, tiny_precomp, image=7)  # rank 1 encodes images 4..9
    split = open_split(*tiny_precomp, "dev")
    jobs = [("nan image", "eval", eval_argv(checkpoint, (data_path, tiny_precomp[1]), folder), None),
            ("score", "eval", eval_argv(checkpoint, tiny_precomp, folder), "score"),
            ("gallery", "retrieve", build_argv(checkpoint, split, "images", folder / "index"), "gallery")]
    return folder, two_processes(folder, jobs), ims


def test_eval_on_two_processes_equals_one(tmp_path, shared, checkpoint, tiny_precomp):
    folder, results = shared
    reference = one_process(eval_cli.main, eval_argv(checkpoint, tiny_precomp, tmp_path, "--shortlist", "3"))
    ranks = results["eval"]
    assert reference["code"] == 0 and [r["code"] for r in ranks] == [0, 0]
    assert ranks[0]["out"] == reference["out"] and "two stages" in reference["out"]
    assert ranks[1]["out"] == "" and ranks[0]["err"] == ranks[1]["err"] == ""
    one, two = np.load(tmp_path / "sims.npy"), np.load(folder / "eval" / "sims.npy")
    assert one.shape == two.shape == (10, 50)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=0)
    assert len(np.unique(one)) == one.size  # no ties that rounding could reorder
    metrics_one = json.loads((tmp_path / "metrics.json").read_text())
    metrics_two = json.loads((folder / "eval" / "metrics.json").read_text())
    assert metrics_two == metrics_one and metrics_one["shortlist"]["k"] == 3


def test_validation_on_two_processes_equals_one(shared, checkpoint, tiny_precomp, tiny_bert_dir):
    reference = validation_job(checkpoint, tiny_precomp, tiny_bert_dir)
    assert shared[1]["validate"] == [reference, None] and reference["rsum"] > 0


def test_bad_image_in_rank_1_share_stops_both_processes(failed):
    folder, results, ims = failed
    ranks = results["nan image"]
    message = ranks[1]["err"].removeprefix("error: process 1: ").removesuffix("\n")
    assert [r["code"] for r in ranks] == [2, 2]
    assert message.startswith(f"{ims}: image 7 holds NaN or infinite region features; python check_data.py ")
    assert ranks[0]["err"] == ""  # printed once, by the process that met it
    assert ranks[0]["out"] == ranks[1]["out"] == ""


def test_exception_in_rank_1_while_scoring_stops_both_processes(failed):
    folder, results, _ = failed
    ranks = results["score"]
    assert [r["code"] for r in ranks] == [2, 2]
    assert ranks[1]["err"] == "error: process 1: injected failure of rank 1\n"
    assert ranks[0]["err"] == ""
    assert not (folder / "sims.npy").exists() and not (folder / "metrics.json").exists()


GALLERY_FILES = {"images": ("regions.npy", "lengths.npy", "global.npy", "faiss.index", "items.txt", "manifest.json"),
                 "captions": ("tokens.npy", "offsets.npy", "global.npy", "faiss.index", "items.txt", "manifest.json")}


@pytest.mark.parametrize("gallery", ["images", "captions"])
def test_build_on_two_processes_writes_the_one_process_index(tmp_path, shared, checkpoint, tiny_precomp, gallery):
    folder, results = shared
    split = open_split(*tiny_precomp, "dev")
    reference = one_process(retrieve.main, build_argv(checkpoint, split, gallery, tmp_path / gallery))
    ranks = results[gallery]
    assert reference["code"] == 0 and [r["code"] for r in ranks] == [0, 0]
    assert ranks[1]["out"] == "" and ranks[0]["out"].startswith(f"indexed {'10' if gallery == 'images' else '50'} ")
    assert sorted(os.listdir(folder / gallery)) == sorted(GALLERY_FILES[gallery])
    for name in GALLERY_FILES[gallery]:
        assert (folder / gallery / name).read_bytes() == (tmp_path / gallery / name).read_bytes(), name
    assert not [name for name in os.listdir(folder) if ".tmp-" in name]  # no staging folder left


def test_build_failure_in_rank_1_stops_both_and_writes_nothing(failed):
    folder, results, _ = failed
    ranks = results["gallery"]
    assert [r["code"] for r in ranks] == [2, 2]
    assert ranks[1]["err"] == "error: process 1: injected failure of rank 1\n"
    assert ranks[0]["err"] == ""
    assert not [name for name in os.listdir(folder) if name.startswith("index")]
