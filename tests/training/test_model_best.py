"""A training always finishes with model_best.pth: it is written before checkpoint.pth, and --resume
restores a missing one from a file that proves to hold the best weights (or saves the next best)."""
import errno
import os

import pytest
import torch
from helpers import train_argv

import train as train_script
from lib.training import trainer


@pytest.fixture
def scripted_rsums(monkeypatch):
    """Validation returns the rSum values of the list this gives, one per call, in order (the weights
    still train for real): which epoch is a best becomes certain."""
    values = []

    def split_metrics(*args, **kwargs):
        return {key: 0.0 for key in trainer.METRIC_TAGS} | {"rsum": values.pop(0)}
    monkeypatch.setattr(trainer, "split_metrics", split_metrics)
    return values


def train(tmp_path, tiny_precomp, tiny_bert_dir, epochs, *extra):
    """train.py's main on the tiny data, no mid-epoch validation -> exit code."""
    return train_script.main(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, "--num_epochs", str(epochs), *extra))


def stored(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("rsum"), state["best_rsum"], state["epoch"]


def test_a_failed_model_best_write_never_leaves_a_checkpoint_claiming_that_best(tmp_path, tiny_precomp,
                                                                               tiny_bert_dir, monkeypatch,
                                                                               scripted_rsums, capsys):
    with monkeypatch.context() as failing:
        for name in ("save_checkpoint", "copy_checkpoint"):  # however the code writes model_best.pth
            def full_at_best(source, path, _real=getattr(trainer, name)):
                if os.path.basename(path) == trainer.BEST:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return _real(source, path)
            failing.setattr(trainer, name, full_at_best)
        scripted_rsums.extend([10.0])
        assert train(tmp_path, tiny_precomp, tiny_bert_dir, 2) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    best, last = tmp_path / "ckpt" / trainer.BEST, tmp_path / "ckpt" / trainer.CHECKPOINT
    assert message == (f"error: {best}: cannot write the checkpoint (No space left on device); the previous "
                       f"one, if any, is intact; run the training again")
    assert not last.exists() and not best.exists()
    scripted_rsums.extend([5.0, 7.0])  # worse than the 10 that was never saved
    assert train(tmp_path, tiny_precomp, tiny_bert_dir, 2) == 0
    assert stored(best) == (7.0, 7.0, 2) and stored(last) == (7.0, 7.0, 2)


def test_resume_restores_a_missing_model_best_from_a_file_that_proves_it(tmp_path, tiny_precomp, tiny_bert_dir,
                                                                        scripted_rsums):
    scripted_rsums.extend([10.0, 4.0])
    assert train(tmp_path, tiny_precomp, tiny_bert_dir, 1) == 0
    best, last = tmp_path / "ckpt" / trainer.BEST, tmp_path / "ckpt" / trainer.CHECKPOINT
    epoch_0 = last.read_bytes()
    best.unlink()
    assert train(tmp_path, tiny_precomp, tiny_bert_dir, 2, "--resume", str(last)) == 0
    assert best.read_bytes() == epoch_0 and stored(best) == (10.0, 10.0, 1)
    log = (tmp_path / "log" / "train.log").read_text(encoding="utf-8")
    assert f"restored the missing {best} from {last}, which holds the best weights (rsum 10.00)" in log


def test_resume_without_proof_saves_the_next_validation_as_the_best(tmp_path, tiny_precomp, tiny_bert_dir,
                                                                  scripted_rsums):
    scripted_rsums.extend([10.0, 4.0])
    assert train(tmp_path, tiny_precomp, tiny_bert_dir, 1) == 0
    best, last = tmp_path / "ckpt" / trainer.BEST, tmp_path / "ckpt" / trainer.CHECKPOINT
    best.unlink()
    older = torch.load(last, map_location="cpu", weights_only=True)
    older.pop("rsum", None)  # as files written before the rSum of their own weights was stored
    old_file = tmp_path / "older.pth"
    torch.save(older, old_file)
    assert train(tmp_path, tiny_precomp, tiny_bert_dir, 2, "--resume", str(old_file)) == 0
    assert stored(best) == (4.0, 4.0, 2)
    log = (tmp_path / "log" / "train.log").read_text(encoding="utf-8")
    assert (f"warning: {best} is missing and {old_file} does not hold the best weights (rsum 10.00); the next "
            f"validation's model will be saved as the best") in log
