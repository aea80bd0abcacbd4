"""Bad input fails before the work in one line; no litter; checkpoints portable across
transformers versions; captions that tokenize to nothing; threads, hub, --help, JSON."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import checkpoint_of, model_from_options, train_from_options
from conftest import TINY_IMG_DIM
from script_runs import run_main

import eval as eval_cli
import train as train_script
from lib.cli.options import default_options, get_argument_parser
from lib.data.precomp import CaptionEncoder, first_non_finite, open_split, train_loader
from lib.errors import XDimError
from lib.evaluation import metrics, scoring
from lib.formats.checkpoint import LEGACY_BUFFERS, load_checkpoint, remove_stale_temp_files, save_checkpoint
from lib.model import bert
from lib.model.bert import load_tokenizer
from lib.model.xdim_model import XDimModel
from lib.runtime import device as runtime
from lib.runtime import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSITION_IDS = LEGACY_BUFFERS[0]


@pytest.fixture(autouse=True)
def one_thread():
    """The scripts set torch's thread count (--threads); give the next test back its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def copy_data(tiny_precomp, tmp_path):
    """A writable copy of the tiny precomp data -> (data_path, data_name, its folder)."""
    data_path, data_name = tiny_precomp
    target = tmp_path / "data"
    shutil.copytree(data_path, target)
    return str(target), data_name, target / data_name


def poison(folder, split, image, value=float("nan")):
    """Set every region feature of one image of `{split}_ims.npy` to `value`."""
    path = folder / f"{split}_ims.npy"
    features = np.load(path)
    features[image] = value
    np.save(path, features)


def train_argv(tmp_path, data_path, data_name, bert_dir, *extra):
    return ["--data_path", data_path, "--data_name", data_name, "--img_dim", str(TINY_IMG_DIM),
            "--bert_path", bert_dir, "--embed_size", "16", "--batch_size", "32", "--workers", "0",
            "--device", "cpu", "--num_epochs", "1", "--val_step", "1000000",
            "--logger_name", str(tmp_path / "log"), "--model_name", str(tmp_path / "ckpt"), *extra]


def run_train(argv, capsys):
    """train.py's main -> (exit code, last stderr line)."""
    code = train_script.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_bert_dir):
    """An untrained tiny model's checkpoint (d = 16): evaluation tests need weights, not skill."""
    torch.manual_seed(0)
    opt = default_options(embed_size=16, img_dim=TINY_IMG_DIM, bert_path=tiny_bert_dir, device="cpu")
    path = str(tmp_path_factory.mktemp("hardening") / "model.pth")
    save_checkpoint(checkpoint_of(model_from_options(opt), opt), path)
    return path


def run_eval(argv, capsys):
    code = eval_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_scoring(monkeypatch):
    """Make any encoding of a split fail the test: the error must come before the work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the split was encoded before the error")
    monkeypatch.setattr(scoring, "encode_split", refuse)


# ---------------------------------------------------------------- 1. outputs checked first

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


def test_training_output_under_a_file_fails_before_any_work(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = train_argv(tmp_path, *tiny_precomp, tiny_bert_dir)
    argv[argv.index("--model_name") + 1] = str(blocker / "ckpt")
    code, err = run_train(argv, capsys)
    assert code == 2 and err == f"error: --model_name {blocker / 'ckpt'}: {blocker} is a file, not a folder"
    assert sorted(os.listdir(tmp_path)) == ["file"]  # not even the log folder


# ---------------------------------------------------------------- 2. non-finite features

def test_first_non_finite_finds_the_image_and_ignores_sum_overflow():
    images = torch.ones(4, 3, 2)
    assert first_non_finite(images) is None
    images[2, 1, 0] = float("nan")
    images[3, 0, 1] = float("inf")
    assert first_non_finite(images) == 2
    huge = torch.full((2, 3, 2), 3e38)  # finite, but their float32 sum is inf
    assert first_non_finite(huge) is None


def test_nan_training_features_name_the_file_and_image(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "train", 7)
    code, err = run_train(train_argv(tmp_path, data_path, data_name, tiny_bert_dir), capsys)
    assert code == 2
    assert err == (f"error: {folder / 'train_ims.npy'}: image 7 holds NaN or infinite region features; "
                   f"python check_data.py --data_path {data_path} --data_name {data_name} checks every split")


def test_nan_dev_features_stop_training_before_the_first_step(tmp_path, tiny_precomp, tiny_bert_dir):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "dev", 3, float("-inf"))
    opt = get_argument_parser().parse_args(train_argv(tmp_path, data_path, data_name, tiny_bert_dir))
    with pytest.raises(XDimError, match=r"dev_ims\.npy: image 3 holds NaN or infinite"):
        train_from_options(opt)
    assert not (tmp_path / "log" / "events.out.tfevents").exists()
    assert not os.path.exists(tmp_path / "ckpt")


def test_nan_evaluation_features_name_the_file_and_image(checkpoint, tiny_precomp, tmp_path, capsys):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "test", 4)
    code, _, err = run_eval(["--model_path", checkpoint, "--data_path", data_path, "--data_name", data_name,
                             "--device", "cpu", "--workers", "0", "--batch_size", "3", "--no_progress"], capsys)
    assert code == 2 and err == (f"error: {folder / 'test_ims.npy'}: image 4 holds NaN or infinite region features; "
                                 f"python check_data.py --data_path {data_path} --data_name {data_name} "
                                 "checks every split\n")


# ---------------------------------------------------------------- 3. options checked first

@pytest.mark.parametrize("option, value, message", [
    ("--learning_rate", "nan", "--learning_rate nan: must be a positive number"),
    ("--learning_rate", "-0.001", "--learning_rate -0.001: must be a positive number"),
    ("--num_epochs", "-1", "--num_epochs -1: must be at least 1"),
    ("--embed_size", "0", "--embed_size 0: must be in 2..16384 (the paper uses 1024)"),
    ("--batch_size", "0", "--batch_size 0: must be at least 1"),
    ("--margin", "-0.2", "--margin -0.2: must be a number >= 0"),
    ("--workers", "-2", "--workers -2: must be 0 (load in the main process) or more"),
    ("--threads", "-1", "--threads -1: must be 0 (automatic) or more"),
    ("--grad_clip", "inf", "--grad_clip inf: must be a finite number (<= 0 disables clipping)"),
])
def test_bad_training_numbers_fail_in_one_line_before_any_work(tmp_path, tiny_precomp, tiny_bert_dir, capsys,
                                                               option, value, message):
    code, err = run_train(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, option, value), capsys)
    assert code == 2 and err == f"error: {message}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("option, value", [("--batch_size", "0"), ("--workers", "-1"), ("--fold_images", "0"),
                                           ("--rows_per_block", "-1")])
def test_bad_evaluation_numbers_fail_in_one_line(checkpoint, capsys, no_scoring, option, value):
    code, _, err = run_eval(["--model_path", checkpoint, "--device", "cpu", option, value], capsys)
    assert code == 2 and err.startswith(f"error: {option} {value}: must be ") and err.count("\n") == 1


@pytest.mark.parametrize("name, devices, message", [
    ("cuda", 0, "--device cuda: no CUDA device is available here"),
    ("cuda:3", 2, "--device cuda:3: this machine has 2 CUDA device(s), numbered 0 to 1"),
    ("gpu", 0, "--device gpu: "),
])
def test_unavailable_device_fails_in_one_line(checkpoint, tmp_path, tiny_precomp, tiny_bert_dir, capsys,
                                              monkeypatch, name, devices, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    code, err = run_train(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, "--device", name), capsys)
    assert code == 2 and err.startswith(f"error: {message}")
    assert os.listdir(tmp_path) == []
    code, _, err = run_eval(["--model_path", checkpoint, "--device", name], capsys)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_indivisible_global_batch_fails_before_anything_is_logged(tmp_path, tiny_precomp, tiny_bert_dir,
                                                                  monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    opt = get_argument_parser().parse_args(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir,
                                                      "--batch_size", "31"))
    with pytest.raises(XDimError, match=r"--batch_size 31 is the global batch .* processes \(2\)"):
        train_from_options(opt)
    assert os.listdir(tmp_path) == []


def test_resuming_a_finished_run_says_so(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    finished = tmp_path / "finished.pth"
    torch.save({"format": "xdim", "model": {}, "epoch": 4}, finished)
    code, err = run_train(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, "--resume", str(finished)), capsys)
    assert code == 2
    assert err == f"error: --num_epochs 1: {finished} already finished epoch 4; ask for more epochs to continue it"


# ---------------------------------------------------------------- 4. messages name the file

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


# ---------------------------------------------------------------- 5. temporary files

def test_atomic_save_writes_through_a_visible_temp_file(tmp_path, monkeypatch):
    seen = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        seen.append(os.path.basename(f.name))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    save_checkpoint({"format": "xdim", "model": {}}, str(tmp_path / "checkpoint.pth"))
    assert seen == [f"checkpoint.pth.tmp-{os.getpid()}"]
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def dead_pid():
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    names = {f"checkpoint.pth.tmp-{dead}": False, f".model_best.pth.{dead}.tmp": False,
             f"checkpoint.pth.tmp-{alive}": True, f".checkpoint.pth.{alive}.tmp": True,
             "checkpoint.pth": True, f"notes.txt.tmp-{dead}": True, "checkpoint.pth.tmp-x": True}
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / n) for n, kept in names.items() if not kept)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, kept in names.items() if kept)


def test_training_start_removes_stale_temp_files(tmp_path, tiny_precomp, tiny_bert_dir, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    stale = folder / f"checkpoint.pth.tmp-{dead_pid()}"
    stale.write_bytes(b"partial")
    finished = tmp_path / "finished.pth"
    torch.save({"format": "xdim", "model": {}, "epoch": 4}, finished)
    assert train_script.main(train_argv(tmp_path, *tiny_precomp, tiny_bert_dir, "--resume", str(finished))) == 2
    assert os.listdir(folder) == []
    assert f"removed {stale}, left by an interrupted save" in capsys.readouterr().out
    assert not (tmp_path / "log").exists()  # the start failed (a finished --resume): no train.log


# ---------------------------------------------------------------- 6. transformers 4.x and 5.x

def as_transformers_4(model):
    """Make BERT keep `position_ids` in its state dict, as transformers 4.30 does."""
    embeddings = model.txt_enc.bert.embeddings
    embeddings.register_buffer("position_ids", embeddings.position_ids.clone(), persistent=True)
    return model


def tiny_model(bert_dir, seed):
    torch.manual_seed(seed)
    return model_from_options(default_options(embed_size=16, img_dim=TINY_IMG_DIM, bert_path=bert_dir, device="cpu"))


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


# ---------------------------------------------------------------- 7. captions

def write_captions(tmp_path, data, images=1):
    folder = tmp_path / "d"
    folder.mkdir(exist_ok=True)
    np.save(folder / "train_ims.npy", np.zeros((images, 2, TINY_IMG_DIM), np.float32))
    (folder / "train_caps.txt").write_bytes(data)
    return str(tmp_path), "d"


@pytest.mark.parametrize("invisible", ["\u200b", "\u0301", "\u00a0", " \u200b\u0301\u00a0 "])
def test_captions_that_tokenize_to_nothing_are_rejected_alike(tmp_path, tiny_bert_dir, invisible):
    data = ("a dog\na cat\n" + invisible + "\na red car\na ball\n").encode("utf-8")
    data_path, data_name = write_captions(tmp_path, data)
    with pytest.raises(XDimError, match=r"train_caps\.txt: line 3 is empty"):
        files = open_split(data_path, data_name, "train", img_dim=TINY_IMG_DIM)
        train_loader(files, CaptionEncoder(load_tokenizer(tiny_bert_dir), 64), batch_size=2)


def test_evaluation_rejects_a_caption_that_tokenizes_to_nothing(tmp_path, tiny_bert_dir):
    data_path, data_name = write_captions(tmp_path, "a dog\n\u200b\u200b\n".encode("utf-8"), images=2)
    split = open_split(data_path, data_name, "train")
    model = tiny_model(tiny_bert_dir, seed=0)
    with pytest.raises(XDimError, match=r"train_caps\.txt: line 2 is empty once tokenized"):
        scoring.encode_split(model, split, CaptionEncoder(load_tokenizer(tiny_bert_dir), 64), progress=False)


def test_one_trailing_blank_line_is_accepted(tmp_path):
    data_path, data_name = write_captions(tmp_path, b"a\nb\nc\nd\ne\n\n")
    assert open_split(data_path, data_name, "train").captions == ["a", "b", "c", "d", "e"]
    data_path, data_name = write_captions(tmp_path, b"a\r\nb\r\nc\r\nd\r\ne\r\n\r\n")
    assert open_split(data_path, data_name, "train").captions == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("data, line", [(b"a\nb\n\nd\ne\nf\n", 3), (b"a\nb\nc\nd\ne\n\n\n", 6), (b"\n", 1)])
def test_blank_lines_elsewhere_are_still_rejected(tmp_path, data, line):
    data_path, data_name = write_captions(tmp_path, data)
    with pytest.raises(XDimError, match=rf"train_caps\.txt: line {line} is empty; python check_data\.py"):
        open_split(data_path, data_name, "train")


def test_undecodable_byte_is_counted_from_one(tmp_path):
    data_path, data_name = write_captions(tmp_path, "a\nb\nc\nd caf\xe9\ne\n".encode("latin-1"))
    with pytest.raises(XDimError, match=r"line 4 is not valid UTF-8 \(byte 6 of the line\)"):
        open_split(data_path, data_name, "train")


# ---------------------------------------------------------------- resolve once, pass down

def test_options_are_never_rewritten(tmp_path, tiny_precomp, tiny_bert_dir, checkpoint):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "dev", 0)  # stops training right after everything is resolved
    opt = get_argument_parser().parse_args(train_argv(tmp_path, data_path, data_name, tiny_bert_dir,
                                                      "--device", "auto"))
    before = dict(vars(opt))
    with pytest.raises(XDimError):
        train_from_options(opt)
    assert vars(opt) == before
    saved = load_checkpoint(checkpoint)
    model = XDimModel.from_checkpoint(checkpoint, device="cpu", amp="bf16")
    assert model.config.as_dict() == saved["model_config"] and model.trained_with == saved["train_config"]
    assert model.amp == "bf16" and "amp" not in saved["train_config"]
    assert model.config.bert == tiny_bert_dir and model.bert_path != tiny_bert_dir  # carried in the file


# ---------------------------------------------------------------- threads

def test_thread_policy(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 8)
    assert runtime.apply_threads(0) == 7 == torch.get_num_threads()
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 1)
    assert runtime.apply_threads(0) == 1
    assert runtime.apply_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert runtime.apply_threads(0) == 2  # the environment's choice stands
    assert get_argument_parser().parse_args(["--threads", "4"]).threads == 4
    assert eval_cli.build_parser().parse_args(["--threads", "4"]).threads == 4


# ---------------------------------------------------------------- hub offline

def test_hub_name_offline_fails_fast_with_the_hint(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(bert, "hub_reachable", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XDimError, match=r"^nobody/no-such-bert: not a local folder, not in the hub cache, "
                                        r"and HF_HUB_OFFLINE forbids downloading it; on a machine with internet"):
        bert.resolve_bert_path("nobody/no-such-bert")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(bert, "hub_reachable", lambda timeout=bert.HUB_TIMEOUT_S: False)
    with pytest.raises(XDimError, match=r"does not answer within 3 s; .*HF_HUB_OFFLINE=1"):
        bert.resolve_bert_path("nobody/no-such-bert")


def test_hub_cache_and_local_folders_need_no_network(monkeypatch, tmp_path, tiny_bert_dir):
    import huggingface_hub._snapshot_download as snapshot_module
    from huggingface_hub import constants
    monkeypatch.setattr(bert, "hub_reachable", lambda *a, **k: pytest.fail("the hub was contacted"))
    assert bert.resolve_bert_path(tiny_bert_dir) == tiny_bert_dir
    repo = tmp_path / "models--nobody--cached-bert"
    snapshot = repo / "snapshots" / "0123abc"
    shutil.copytree(tiny_bert_dir, snapshot)  # config, vocabulary, weights: a complete cache entry
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    # Where snapshot_download looks by default (huggingface_hub 1.x/2.x, and 0.x as transformers 4.30 uses).
    for module in (constants, snapshot_module):
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, str(tmp_path))
    assert bert.resolve_bert_path("nobody/cached-bert") == str(snapshot)
    assert load_tokenizer(str(snapshot)).convert_tokens_to_ids("dog") == load_tokenizer(tiny_bert_dir).convert_tokens_to_ids("dog")


# ---------------------------------------------------------------- --help, torchrun, JSON

def help_text(parser):
    return " ".join(parser.format_help().split())


def test_help_hides_noise_and_unused_options():
    text = help_text(get_argument_parser())
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text
    assert "(default: 0.0005)" in text
    for hidden in ("--vocab_path", "--word_dim", "--backbone_path", "--backbone_source", "--backbone_warmup_epochs",
                   "--embedding_warmup_epochs", "--backbone_lr_factor", "--input_scale_factor"):
        assert hidden not in text
    old = get_argument_parser().parse_args(["--word_dim", "200", "--backbone_lr_factor", "0.1"])
    assert old.word_dim == 200 and old.backbone_lr_factor == 0.1
    assert "(default: None)" not in help_text(eval_cli.build_parser())


def test_testall_folds_can_be_turned_off():
    parser = eval_cli.build_parser(fold5=True)
    assert parser.parse_args([]).fold5 is True and parser.parse_args(["--no-fold5"]).fold5 is False
    assert "--fold5, --no-fold5" in help_text(parser) and "(default: True)" in help_text(parser)


def test_ddp_does_not_search_for_unused_parameters(monkeypatch):
    seen = {}
    monkeypatch.setattr(distributed, "DistributedDataParallel", lambda module, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    distributed.wrap_model(torch.nn.Linear(2, 2))
    assert seen["find_unused_parameters"] is False and seen["broadcast_buffers"] is False


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
