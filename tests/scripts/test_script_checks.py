"""Entry points' messages: eval.py's warning for constant scores and its --data_name hint for test.py,
--device mps, --compare's minimum resamples, ablate.py naming --out, convert_features.py leaving no
empty --out."""
import numpy as np
import pytest
import torch
from helpers import checkpoint_of, model_from_options, run_main

import ablate
import convert_features
import eval as eval_cli
from lib.cli.train import default_options
from lib.data.precomp import open_split
from lib.formats.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_bert_dir, tiny_precomp):
    """A tiny checkpoint trained (so it says) on the tiny split, whose data_name is demo_precomp."""
    data_path, data_name = tiny_precomp
    torch.manual_seed(0)
    opt = default_options(embed_size=16, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data_path, data_name=data_name)
    path = str(tmp_path_factory.mktemp("scripts") / "model_best.pth")
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), path)
    return path


def test_features_scaled_so_that_every_score_is_equal_warn(checkpoint, tiny_precomp, tmp_path):
    data_path, data_name = tiny_precomp
    split = open_split(data_path, data_name, "test")
    folder = tmp_path / data_name
    folder.mkdir()
    np.save(folder / "test_ims.npy", np.array(split.images) * np.float32(1e30))
    (folder / "test_caps.txt").write_bytes(open(split.captions_path, "rb").read())
    run = run_main(eval_cli.main, ["--model_path", checkpoint, "--data_path", str(tmp_path), "--device", "cpu",
                                   "--workers", "0"])
    assert f"warning: {checkpoint}: every score is " in run.err and "count only ties" in run.err
    plain = run_main(eval_cli.main, ["--model_path", checkpoint, "--device", "cpu", "--workers", "0"])
    assert "warning" not in plain.err


def test_test_py_on_a_demo_checkpoint_names_its_data_name(checkpoint):
    run = run_main(_test_py_main, ["--model_path", checkpoint, "--device", "cpu"], expect=2)
    assert run.err.endswith("; this checkpoint was trained on --data_name demo_precomp: add --data_name "
                            "demo_precomp\n")


def _test_py_main(argv):
    """test.py's main: eval.py's with the Flickr30K preset."""
    return eval_cli.main(argv, data_name="f30k_precomp", split="test", fold5=False)


def test_device_mps_is_our_line_not_torchs(checkpoint):
    run = run_main(eval_cli.main, ["--model_path", checkpoint, "--device", "mps"], expect=2)
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    assert run.err == (f"error: --device mps: torch {torch.__version__} has no usable mps device on this machine; "
                       "use --device cpu or auto\n")


def test_compare_refuses_too_few_resamples_for_an_interval(tmp_path):
    sims = tmp_path / "a.npy"
    np.save(sims, np.eye(2, 10, dtype=np.float32))
    run = run_main(eval_cli.main, ["--compare", str(sims), str(sims), "--n_resamples", "1"], expect=2)
    assert run.err == ("error: --n_resamples 1: must be at least 40 for a 95% interval (the default, 10000, "
                       "gives stable bounds)\n")


def test_ablate_names_out_for_an_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = run_main(ablate.main, ["--out", str(blocker / "ablation"), "--variants", "xdim"], expect=2)
    assert run.err == f"error: --out {blocker / 'ablation'}: {blocker} is a file, not a folder\n"


def test_failed_conversion_leaves_no_empty_out(tmp_path):
    bad = tmp_path / "feats.tsv"
    bad.write_text("not a tsv record\n")
    out = tmp_path / "new" / "mine"
    run_main(convert_features.main, ["--tsv", str(bad), "--out", str(out), "--split", "gallery",
                                     "--no_progress"], expect=2)
    assert not (tmp_path / "new").exists()
