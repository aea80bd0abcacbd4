"""lib/formats/checkpoint.py: round trips, old formats, refusals and atomic saves and copies."""
import errno
import os
import re
import shutil

import pytest
import torch
from helpers import (
    checkpoint_of,
    dead_pid,
    make_opt,
    model_from_options,
    save_v1_checkpoint,
    tiny_batch,
    tiny_model,
    tiny_opt,
    trainer_for,
)

import eval as eval_cli
import train as train_script
from lib.errors import XDimError
from lib.formats import checkpoint
from lib.formats.checkpoint import (
    LEGACY_BUFFERS,
    load_checkpoint,
    new_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    training_state,
)
from lib.model.xdim_model import XDimModel

POSITION_IDS = LEGACY_BUFFERS[0]


def test_refused_pickle_names_the_object_and_never_suggests_an_unsafe_load(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo must-never-run",))

    path = str(tmp_path / "payload.pth")
    torch.save({"model": Payload()}, path)
    with pytest.raises(XDimError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: holds Python objects (") and "a safe load refuses" in message
    assert "system" in message and "weights_only" not in message and "\n" not in message


def test_atomic_save_writes_through_a_visible_temp_file(tmp_path, monkeypatch):
    seen = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        seen.append(os.path.basename(f.file.name))  # f: the writer that keeps a full disk's OSError
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    save_checkpoint({"format": "xdim", "model": {}}, str(tmp_path / "checkpoint.pth"))
    assert seen == [f"checkpoint.pth.xdim-tmp-{os.getpid()}"]
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    names = {f"checkpoint.pth.xdim-tmp-{dead}": False, f"model_best.pth.xdim-tmp-{dead}": False,
             f"checkpoint.pth.xdim-tmp-{alive}": True, f".model_best.pth.{dead}.tmp": True,
             "checkpoint.pth": True, f"notes.txt.xdim-tmp-{dead}": True, "checkpoint.pth.xdim-tmp-x": True,
             f"model_best.pth.old-{dead}": True, f"checkpoint.pth.tmp-{dead}": True}
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / n) for n, kept in names.items() if not kept)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, kept in names.items() if kept)


def as_transformers_4(model):
    """Make BERT keep `position_ids` in its state dict, as transformers 4.30 does."""
    embeddings = model.txt_enc.bert.embeddings
    embeddings.register_buffer("position_ids", embeddings.position_ids.clone(), persistent=True)
    return model


@pytest.mark.parametrize("writer_is_4x", [True, False])
def test_checkpoints_load_under_either_transformers_version(tiny_bert_dir, tmp_path, writer_is_4x):
    writer = tiny_model(tiny_bert_dir, seed=1)
    reader = tiny_model(tiny_bert_dir, seed=2)
    (as_transformers_4(writer) if writer_is_4x else as_transformers_4(reader))
    assert "bert.embeddings.position_ids" in (writer if writer_is_4x else reader).txt_enc.state_dict()
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint(checkpoint_of(writer), path)
    state = load_checkpoint(path)["model"]
    assert POSITION_IDS not in state  # never saved, whichever version wrote it
    reader.load_state_dict(state, path)
    for key, value in writer.state_dict().items():
        assert torch.equal(reader.state_dict()[key], value), key
    positions = reader.txt_enc.bert.embeddings.position_ids
    assert torch.equal(positions, torch.arange(positions.shape[-1]).expand_as(positions))
    # A 4.x checkpoint of older versions of this codebase holds the buffer: accepted too.
    reader.load_state_dict({**state, POSITION_IDS: torch.arange(64)[None]}, path)


def scores_of(model, seed=1):
    model.val_start()
    with torch.no_grad():
        return model.forward_sim(*model.forward_emb(*tiny_batch(seed=seed)))


def test_our_checkpoint_round_trip(tiny_bert_dir, tmp_path):
    opt = tiny_opt(tiny_bert_dir)
    model = model_from_options(opt)
    model.train()
    trainer = trainer_for(model, opt)
    trainer.train_step(*tiny_batch())
    path = str(tmp_path / "model_best.pth")
    save_checkpoint(trainer.checkpoint(next_epoch=3), path)
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["iterations"] == 1 and raw["version"] == 2
    assert raw["model_config"]["embed_size"] == 16 and raw["train_config"]["learning_rate"] == 0.002
    assert raw["optimizer"]["state"]
    loaded = XDimModel.from_checkpoint(path, device="cpu")  # BERT architecture and vocab from the file
    assert torch.equal(scores_of(loaded), scores_of(model))
    assert loaded.vocab() == model.vocab()


class Payload:
    """An object a weights-only load refuses; unpickling it would call print."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_unreadable_files_say_what_they_are_in_one_line(tiny_bert_dir, tmp_path):
    model = model_from_options(tiny_opt(tiny_bert_dir))
    good = str(tmp_path / "good.pth")
    save_checkpoint(checkpoint_of(model), good)
    legacy = str(tmp_path / "legacy.pth")
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "truncated.pth": open(good, "rb").read()[:5000],
        "legacy_truncated.pth": open(legacy, "rb").read()[:200],
        "notes.pth": "model trained on 2 GPUs\nbest rsum 512.3\n".encode("utf-8"),
        "garbage.pth": b"\x00\x01 definitely not a checkpoint",
        "empty.pth": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"model": Payload()}, str(tmp_path / "payload.pth"))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, str(tmp_path / "foreign.pth"))
    expected = {
        "truncated.pth": "is truncated or corrupt (its zip archive lacks the end record); re-download or re-save it",
        "legacy_truncated.pth": "is truncated or corrupt (",
        "notes.pth": "is a text file, not a PyTorch checkpoint",
        "garbage.pth": "is not a PyTorch checkpoint (neither a zip archive nor a pickle)",
        "empty.pth": "is empty, not a checkpoint",
        "payload.pth": "holds Python objects (",
        "foreign.pth": "not an X-Dim checkpoint",
        "absent.pth": "no such checkpoint",
    }
    for name, problem in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(XDimError) as info:
            XDimModel.from_checkpoint(path, device="cpu")
        message = str(info.value)
        assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message
        assert "weights_only" not in message
    assert "re-download or re-save it" in str(pytest.raises(XDimError, load_checkpoint,
                                                            str(tmp_path / "legacy_truncated.pth")).value)


def test_checkpoint_of_another_shape_is_rejected_with_the_key(tiny_bert_dir, tmp_path):
    path = str(tmp_path / "small.pth")
    save_checkpoint(checkpoint_of(model_from_options(tiny_opt(tiny_bert_dir, embed_size=8))), path)
    model = model_from_options(tiny_opt(tiny_bert_dir, embed_size=16))
    with pytest.raises(XDimError, match=r"'img_enc.fc.weight' has shape \(8, 32\).*\(16, 32\)"):
        model.load_state_dict(load_checkpoint(path)["model"], path=path)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"format": "xdim", "model": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"format": "xdim", "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_version_1_checkpoint_loads_and_scores_as_the_model_it_holds(tiny_bert_dir, tmp_path):
    opt = tiny_opt(tiny_bert_dir, sim="xdim_nodelta", no_txtnorm=True, data_path="/data", data_name="x_precomp")
    model = model_from_options(opt)
    path = save_v1_checkpoint(model, opt, str(tmp_path / "v1.pth"))
    loaded = XDimModel.from_checkpoint(path, device="cpu")
    assert loaded.config.sim == "xdim_nodelta" and loaded.config.no_txtnorm and not loaded.config.no_imgnorm
    assert (loaded.config.embed_size, loaded.config.img_dim, loaded.config.bert) == (16, 32, tiny_bert_dir)
    assert loaded.trained_with["data_path"] == "/data" and loaded.trained_with["learning_rate"] == 0.002
    assert "device" not in loaded.trained_with and "vocab_path" not in loaded.trained_with
    assert torch.equal(scores_of(loaded), scores_of(model))
    state = training_state(load_checkpoint(path))
    assert (state["epoch"], state["best_rsum"], state["iterations"]) == (3, 123.5, 42)
    assert set(state) == {"optimizer", "epoch", "best_rsum", "iterations"}


def test_trainer_state_round_trips_key_by_key(tiny_bert_dir, tmp_path):
    opt = tiny_opt(tiny_bert_dir)
    model = model_from_options(opt)
    trainer = trainer_for(model, opt)
    model.train()
    trainer.train_step(*tiny_batch())
    trainer.best_rsum = 12.5
    path = str(tmp_path / "resumable.pth")
    save_checkpoint(trainer.checkpoint(next_epoch=2), path)
    state = training_state(load_checkpoint(path))
    assert (state["epoch"], state["best_rsum"], state["iterations"]) == (2, 12.5, 1)
    fresh = trainer_for(model_from_options(opt), opt)
    assert fresh.load_state(state) == 2 and (fresh.best_rsum, fresh.iterations) == (12.5, 1)
    assert fresh.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()
    # A further trainer field is stored and read back with no change to the format's code.
    ckpt = new_checkpoint(model, None, {**trainer.state(3), "sampler_position": 17})
    assert training_state(ckpt)["sampler_position"] == 17 and ckpt["model_config"] == model.config.as_dict()
    with pytest.raises(ValueError, match="'vocab' is a key of the model part"):
        new_checkpoint(model, None, {"vocab": []})


def test_unknown_checkpoint_version_is_refused(tiny_bert_dir, tmp_path):
    state = checkpoint_of(model_from_options(tiny_opt(tiny_bert_dir)))
    state["version"] = 3
    path = str(tmp_path / "future.pth")
    save_checkpoint(state, path)
    with pytest.raises(XDimError, match=re.escape(f"{path}: written by version 3 of this format, this code "
                                                  "reads versions 1 and 2; re-save it")):
        XDimModel.from_checkpoint(path)


def last_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


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


def test_folder_as_model_path_says_so_and_suggests_model_best(trained, tmp_path, capsys):
    with pytest.raises(XDimError) as error:
        load_checkpoint(str(tmp_path))
    assert str(error.value) == f"{tmp_path}: is a folder, not a checkpoint file, give the checkpoint file inside it"
    folder = trained.model_name
    assert eval_cli.main(["--model_path", folder, "--device", "cpu"]) == 2
    assert last_error(capsys) == (f"error: {folder}: is a folder, not a checkpoint file; "
                                  f"did you mean {os.path.join(folder, 'model_best.pth')}?")


def test_a_copy_that_fails_midway_leaves_the_previous_best_intact(tmp_path, monkeypatch):
    # catches: copy_checkpoint writing model_best.pth in place (`open(dst, "wb")`), which truncates
    # the previous best model before the copy can fail.
    source, best = tmp_path / "checkpoint.pth", tmp_path / "model_best.pth"
    source.write_bytes(b"new weights " * 1000)
    best.write_bytes(b"previous best weights")
    copy = shutil.copyfileobj

    def half_then_full_disk(src, dst, *args):
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", half_then_full_disk)
    with pytest.raises((XDimError, OSError)):
        checkpoint.copy_checkpoint(str(source), str(best))
    assert best.read_bytes() == b"previous best weights"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth", "model_best.pth"]
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    checkpoint.copy_checkpoint(str(source), str(best))
    assert best.read_bytes() == source.read_bytes()
