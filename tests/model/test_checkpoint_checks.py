"""Checkpoints refused before any work: a cut vocabulary, an embed size out of bounds."""
import pytest
import torch
from helpers import checkpoint_of, model_from_options, run_main

import eval as eval_cli
from lib.cli.train import default_options
from lib.formats.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_bert_dir):
    """A tiny model's checkpoint dict."""
    torch.manual_seed(0)
    opt = default_options(embed_size=16, img_dim=32, bert_path=tiny_bert_dir, device="cpu")
    return checkpoint_of(model_from_options(opt), opt)


def _eval(path, tiny_precomp, *extra):
    data_path, data_name = tiny_precomp
    return run_main(eval_cli.main, ["--model_path", str(path), "--data_path", data_path, "--data_name", data_name,
                                    "--device", "cpu", "--workers", "0", *extra], expect=2)


def test_a_cut_vocabulary_is_refused(saved, tmp_path, tiny_precomp):
    ckpt = dict(saved, vocab=saved["vocab"][:-7])
    rows = len(saved["vocab"])
    path = tmp_path / "cut.pth"
    save_checkpoint(ckpt, str(path))
    run = _eval(path, tiny_precomp)
    assert run.err == (f"error: {path}: its vocabulary holds {rows - 7} tokens but the BERT embeddings have {rows} "
                       "rows (a cut or foreign vocabulary); re-save the checkpoint, or give --bert_path the BERT "
                       "folder it was trained with\n")


@pytest.mark.parametrize("size", [1, 200000])
def test_an_embed_size_out_of_bounds_is_one_line_before_any_allocation(saved, tmp_path, tiny_precomp, size):
    ckpt = dict(saved, model_config=dict(saved["model_config"], embed_size=size))
    path = tmp_path / "big.pth"
    save_checkpoint(ckpt, str(path))
    run = _eval(path, tiny_precomp)
    assert run.err == (f"error: {path}: stored embed_size {size}: must lie in 2..16384 (the paper uses 1024)\n")
