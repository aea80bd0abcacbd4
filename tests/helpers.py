"""Shared test helpers: builders of models, checkpoints and runs, writers of extractor and official files,
script runners, float64 references and process-group helpers. Fixtures live in conftest.py.
"""
import argparse
import base64
import contextlib
import datetime
import errno
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from transformers import BertModel

import eval as eval_cli
import retrieve
import train as train_script
from lib.cli.train import check_training_options, default_options, train_configs
from lib.data.synthetic import DEMO_OBJECTS
from lib.formats.checkpoint import (
    new_checkpoint,
    save_checkpoint,
)
from lib.model.xdim_model import XDimModel
from lib.runtime import distributed
from lib.training import trainer


def model_from_options(opt, bert_config=None):
    """A new XDimModel on opt.device: pretrained BERT from opt.bert_path, or only
    the architecture of `bert_config` (a dict) when given."""
    model_config, _, runtime = train_configs(opt)
    if bert_config is not None:
        model_config = model_config.with_bert_config(bert_config)
    return XDimModel(model_config, bert_path=opt.bert_path, amp=runtime.amp).to(runtime.torch_device())


def checkpoint_of(model, opt=None, **trainer_state):
    """`model`'s checkpoint dict; with `opt`, its TrainConfig too (where it was trained)."""
    train_config = None if opt is None else train_configs(opt)[1]
    return new_checkpoint(model, train_config, trainer_state or None)


def trainer_for(model, opt):
    """A Trainer of `model` with opt's optimizer and loss settings, for single train steps."""
    return trainer.Trainer(model, train_configs(opt)[1], loader=None, dev_files=None, caption_tokenizer=None,
                           logger=None, tb=None)


def train_from_options(opt, **kwargs):
    """train.py's work on `opt`: check the options, build the configs, train."""
    check_training_options(opt)
    return trainer.train(*train_configs(opt), **kwargs)


def tsv_line(image_id, width, height, boxes, feats):
    """One TSV line: image_id, image_w, image_h, num_boxes, base64 boxes, base64 features."""
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode("ascii")
    return "\t".join([image_id, str(width), str(height), str(len(boxes)), b64(boxes), b64(feats)]) + "\n"


def write_tsv(path, images):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(tsv_line(*image) for image in images)
    return str(path)


def write_npz(folder, image, name=None):
    """One bottom-up-attention.pytorch file `{name or image id}.npz`; returns its path."""
    image_id, width, height, boxes, feats = image
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, (name or image_id) + ".npz")
    # bottom-up-attention.pytorch also stores an `info` dict (a pickled object): it must not be read.
    np.savez_compressed(path, x=feats, bbox=boxes, num_bbox=len(boxes), image_w=width, image_h=height,
                        info=np.array({"objects": [1, 2]}, dtype=object))
    return path


TINY_IMG_DIM = 32


TINY_REGIONS = 36


TINY_SPLITS = {"train": 32, "dev": 10, "test": 10, "testall": 10}


def v1_checkpoint(model, opt, **options):
    """A version-1 checkpoint dict of `model`'s weights trained with options `opt` (a namespace);
    `options` change some (sim=None leaves `sim` out, as files from before --sim did)."""
    opt = dict(vars(opt))
    opt.update(options)
    opt = {key: value for key, value in opt.items() if not (key == "sim" and value is None)}
    return {"format": "xdim", "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "epoch": 3, "best_rsum": 123.5, "Eiters": 42, "opt": opt,
            "bert_config": model.bert_config, "vocab": model.vocab()}


def save_v1_checkpoint(model, opt, path, **options):
    torch.save(v1_checkpoint(model, opt, **options), path)
    return path


def official_parts(bert_dir, d=1024, img_dim=2048, seed=0):
    """The three official state dicts (without the `module.` prefix) with random values."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.05
    image = {
        "fc.weight": rand(d, img_dim), "fc.bias": rand(d),
        "mlp.layers.0.weight": rand(d // 2, img_dim), "mlp.layers.0.bias": rand(d // 2),
        "mlp.layers.1.weight": rand(d, d // 2), "mlp.layers.1.bias": rand(d),
    }
    for index, size in (("0", d // 2), ("1", d)):  # bns.1 is the unused BatchNorm
        image.update({
            f"mlp.bns.{index}.weight": 1 + rand(size), f"mlp.bns.{index}.bias": rand(size),
            f"mlp.bns.{index}.running_mean": rand(size), f"mlp.bns.{index}.running_var": 1 + rand(size).abs(),
            f"mlp.bns.{index}.num_batches_tracked": torch.tensor(1000),
        })
    bert = BertModel.from_pretrained(bert_dir)
    text = {f"bert.{k}": v.clone() for k, v in bert.state_dict().items()}
    # transformers 4.x saved this buffer in 2023; current versions leave it out.
    text["bert.embeddings.position_ids"] = torch.arange(bert.config.max_position_embeddings).unsqueeze(0)
    text["linear.weight"] = rand(d, bert.config.hidden_size)
    text["linear.bias"] = rand(d)
    similarity = {
        "weights.weight": torch.randn(d, d, generator=gen),
        "sim_map.weight": 2.5 + 0.1 * torch.randn(1, d, generator=gen),
        "temp_learnable.weight": torch.full((1, 1), 4.0),
        "temp_scale.weight": torch.full((1, 1), 2.6593),
        "sim_eval.weight": rand(1, d),
    }
    return [image, text, similarity]


def official_opt(d=1024, img_dim=2048):
    """An argparse.Namespace like the official parser's (a subset of its fields)."""
    return argparse.Namespace(
        data_path="../Flickr30K/", data_name="f30k_precomp", vocab_path="./vocab/", margin=0.2,
        num_epochs=25, batch_size=128, word_dim=300, embed_size=d, grad_clip=2.0, learning_rate=0.0005,
        lr_update=15, optim="adam", workers=10, log_step=200, val_step=500, logger_name="../log",
        model_name="../checkpoint", resume="", max_violation=False, img_dim=img_dim, no_imgnorm=False,
        no_txtnorm=False, precomp_enc_type="basic", backbone_path="", backbone_source="detector",
        vse_mean_warmup_epochs=1, reset_start_epoch=False, backbone_warmup_epochs=5,
        embedding_warmup_epochs=2, backbone_lr_factor=0.01, input_scale_factor=1)


def write_official_checkpoint(path, parts, opt):
    """torch.save the parts as the release does: `module.` prefixes, pickled Namespace."""
    model = [{f"module.{k}": v for k, v in part.items()} for part in parts]
    torch.save({"model": model, "opt": opt, "epoch": 24, "best_rsum": 528.2, "Eiters": 12345}, path)
    return path


class ScriptRun(NamedTuple):
    """What a script did: exit code, standard output, standard error."""
    code: int
    out: str
    err: str


def _check_exit(what, run, expect):
    assert expect is None or run.code == expect, (
        f"{what} exited {run.code}, expected {expect}\n"
        f"--- stdout ---\n{run.out}--- stderr ---\n{run.err}")
    return run


def run_main(main, argv, expect=0):
    """main(argv) with stdout and stderr captured -> ScriptRun; fails showing both unless the exit code is
    `expect` (None: any code)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return _check_exit(f"{main.__module__}.main({argv})", ScriptRun(code, out.getvalue(), err.getvalue()), expect)


def run_command(args, expect=0, **kwargs):
    """subprocess.run(args) with its output captured as text -> ScriptRun; fails showing both outputs
    unless the exit code is `expect` (None: any code). kwargs go to subprocess.run (cwd, env, timeout)."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    return _check_exit(" ".join(map(str, args)), ScriptRun(result.returncode, result.stdout, result.stderr),
                       expect)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def planted_blocks(sizes, seed=0):
    """W (d, d) with blocks of mutually dependent dimensions under a random permutation, and the blocks."""
    rng = np.random.default_rng(seed)
    d = sum(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    same = labels[:, None] == labels[None, :]
    W = np.where(same, rng.uniform(0.5, 1.0, (d, d)), rng.uniform(0.0, 0.2, (d, d)))
    permutation = rng.permutation(d)
    W = W[np.ix_(permutation, permutation)]
    labels = labels[permutation]
    return W, [np.flatnonzero(labels == b) for b in range(len(sizes))]


def assert_contiguous(order, blocks):
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    for block in blocks:
        places = np.sort(position[block])
        assert places[-1] - places[0] == len(block) - 1, f"block {block.tolist()} at positions {places.tolist()}"


def hide_package(monkeypatch, package):
    """Until the test ends, importing `package` (or any of its modules) raises ImportError."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def read_png(path):
    from matplotlib.image import imread
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    return imread(path)


def hand_mask(E, lam, log_t_mask):
    """The mask and thresholds written out in float64 numpy from the equations."""
    P = 1.0 / (1.0 + np.exp(-E))
    theta = P.mean(axis=1) + lam * P.std(axis=1, ddof=1)
    return np.tanh(np.exp(np.exp(log_t_mask) * (P - theta[:, None]))), theta


D = 32


BLOCKS = [4, 10, 6, 12]


def whole_word_count(captions, word):
    return sum(len(re.findall(rf"\b{word}\b", caption.lower())) for caption in captions)


def present_and_absent_objects(captions):
    present = [w for w in DEMO_OBJECTS if whole_word_count(captions, w) > 0]
    absent = [w for w in DEMO_OBJECTS if whole_word_count(" ".join(captions).split(), w) == 0]
    return present, absent


def join_group(rank, world, rendezvous):
    """Join a gloo group as torchrun's process `rank` would, rendezvous through a file.

    A file rendezvous (not torchrun's TCP port) cannot meet another test run's processes.
    `init_from_env` then finds the group already there and only reads the environment.
    """
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)  # two processes on two cores, as torchrun's OMP_NUM_THREADS=1
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    assert distributed.init_from_env("cpu") == torch.device("cpu")


def spawn(worker, args, nprocs=2, timeout=300):
    """torch.multiprocessing.spawn, but a hung worker fails the test instead of hanging CI."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{worker.__name__}: worker processes still running after {timeout} s")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _padded_batch(seed, n, max_len, d):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    emb = torch.randn(n, max_len, d, generator=g)
    return emb, lengths


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


def run_eval(argv, capsys):
    code = eval_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def dead_pid():
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def tiny_model(bert_dir, seed):
    torch.manual_seed(seed)
    return model_from_options(default_options(embed_size=16, img_dim=TINY_IMG_DIM, bert_path=bert_dir, device="cpu"))


def help_text(parser):
    return " ".join(parser.format_help().split())


def tiny_opt(bert_dir, **overrides):
    settings = dict(bert_path=bert_dir, img_dim=32, embed_size=16, device="cpu", learning_rate=0.002)
    settings.update(overrides)
    return default_options(**settings)


def tiny_batch(n=4, regions=6, img_dim=32, vocab=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, regions, img_dim, generator=gen)
    lengths = torch.tensor([7, 5, 6, 4][:n])
    captions = torch.zeros(n, 7, dtype=torch.long)
    for i, length in enumerate(lengths):
        captions[i, 0] = 2
        captions[i, 1:length - 1] = torch.randint(5, vocab, (int(length) - 2,), generator=gen)
        captions[i, length - 1] = 3
    return images, captions, lengths


def run_training(opt):
    """lib.training.trainer.train from a train.py options namespace, as train.py runs it -> its result dict."""
    return train_from_options(opt)


def writable_split(tiny_precomp, tmp_path):
    """A writable copy of the tiny precomp data -> its split folder."""
    data_path, data_name = tiny_precomp
    shutil.copytree(data_path, tmp_path / "data")
    return tmp_path / "data" / data_name


def replace_lines(path, lines):
    """Rewrite caption lines {line number (from 1): text} of a caption file."""
    captions = path.read_text(encoding="utf-8").splitlines()
    for number, text in lines.items():
        captions[number - 1] = text
    path.write_text("\n".join(captions) + "\n", encoding="utf-8")
    return captions


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


EMBED = 16


def _checkpoint(folder, tiny_bert_dir, tiny_precomp, seed):
    """(path, model) of an untrained tiny X-Dim (random weights are enough to compare scores)."""
    data_path, data_name = tiny_precomp
    torch.manual_seed(seed)
    opt = default_options(embed_size=EMBED, img_dim=32, bert_path=tiny_bert_dir, device="cpu",
                          data_path=data_path, data_name=data_name, workers=0)
    model = model_from_options(opt)
    path = str(folder / f"model_{seed}.pth")
    save_checkpoint(checkpoint_of(model, opt), path)
    return path, XDimModel.from_checkpoint(path, device="cpu")


def _query_error(argv, capsys):
    capsys.readouterr()
    code = retrieve.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def folder_state(folder):
    """{relative path: bytes} of every file under `folder`."""
    state = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            state[os.path.relpath(path, folder)] = open(path, "rb").read()
    return state


class FullDisk:
    """A file object that accepts `room` bytes (or characters), writes them, then raises ENOSPC."""

    def __init__(self, handle, room):
        self._handle, self._room = handle, room

    def write(self, data):
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if size > self._room:
            self._handle.write(data[:self._room] if isinstance(data, str) else bytes(memoryview(data))[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def one_error_line(run):
    """The message of a run that failed with one `error:` line (exit 2)."""
    assert run.code == 2 and run.err.startswith("error: ") and run.err.count("\n") == 1, run.err
    return run.err[len("error: "):-1]


def _varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _fields(message):
    """The (field number, wire value) pairs of one protobuf message, by the wire format."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 1:
            value, pos = message[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = message[pos:pos + 4], pos + 4
        else:  # 2: length-delimited
            length, pos = _varint(message, pos)
            value, pos = message[pos:pos + length], pos + length
        yield number, value


def read_scalars(logdir):
    """Parse the TFRecord events file by hand (no protobuf library) -> {tag: [(step, value)]}.

    Event: step = field 2, summary = field 5; Summary: value = field 1; Value: tag = field 1,
    simple_value = field 2 (float32).
    """
    (name,) = [f for f in os.listdir(logdir) if f.startswith("events.out.tfevents")]
    data = open(os.path.join(logdir, name), "rb").read()
    scalars, pos = {}, 0
    while pos < len(data):
        (length,) = struct.unpack("Q", data[pos:pos + 8])
        event = list(_fields(data[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
        step = next((value for number, value in event if number == 2), 0)
        for summary in (value for number, value in event if number == 5):
            for item in (value for number, value in _fields(summary) if number == 1):
                parts = dict(_fields(item))
                scalars.setdefault(parts[1].decode(), []).append((step, struct.unpack("<f", parts[2])[0]))
    return scalars


def make_opt(tmp_path, data, bert_dir, name="run", **overrides):
    """Small CPU training options on `data` = (data_path, data_name) of TINY_IMG_DIM features."""
    settings = dict(data_path=data[0], data_name=data[1], img_dim=TINY_IMG_DIM, bert_path=bert_dir,
                    embed_size=32, batch_size=32, num_epochs=2, lr_update=1, workers=0,
                    log_step=2, val_step=10 ** 9, device="cpu", seed=3,
                    logger_name=str(tmp_path / name / "log"),
                    model_name=str(tmp_path / name / "ckpt"))
    settings.update(overrides)
    return default_options(**settings)


def random_inputs(d, n_img=3, n_cap=5, regions=7, max_len=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_img, regions, d, generator=gen), dim=-1)
    cap = torch.nn.functional.normalize(torch.randn(n_cap, max_len, d, generator=gen), dim=-1)
    lens = torch.randint(2, max_len + 1, (n_cap,), generator=gen)
    lens[0] = max_len
    return img, cap, lens


def relative_error(ours, ref):
    """max |ours - ref| over max |ref|: scores can sit near zero, so normalise by the largest."""
    return np.abs(ours - ref).max() / np.abs(ref).max()


def hinge_losses_by_hand(scores, margin):
    """scores (B, B) float64 numpy, matching pairs on the diagonal -> (the sum of every margin violation,
    the sum of each image row's and each caption column's hardest one), written out from the definition."""
    n = len(scores)
    captions, images = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                captions[i, j] = max(0.0, margin + scores[i, j] - scores[i, i])  # image i, wrong caption j
                images[i, j] = max(0.0, margin + scores[i, j] - scores[j, j])  # caption j, wrong image i
    return captions.sum() + images.sum(), captions.max(axis=1).sum() + images.max(axis=0).sum()


# ---------------------------------------------------------------- raw images

IMAGE_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "black": (10, 10, 10)}
IMAGE_OBJECTS = ("dog", "cat", "car", "boat", "bird")


def write_image_layout(root, sizes=None, side=64, seed=0):
    """A small dataset of image files in the official raw-image layout -> (data_path, data_name).

    data_path/precomp/S_caps.txt (5 captions per image) and S_ids.txt (one id per image),
    data_path/id_mapping.json and data_path/flickr30k-images/<file>: `side` x `side` colour
    images, JPEG and PNG alternately, each a coloured square whose colour its captions name.
    Written with Pillow, independently of the demo writer of lib.data. sizes: split -> images.
    """
    sizes = sizes or {"train": 8, "dev": 4, "test": 4}
    rng = np.random.RandomState(seed)
    data_path = os.path.join(root, "f30k")
    os.makedirs(os.path.join(data_path, "precomp"), exist_ok=True)
    os.makedirs(os.path.join(data_path, "flickr30k-images"), exist_ok=True)
    mapping, next_id = {}, 1000
    for split, n_images in sizes.items():
        ids, captions = [], []
        for _ in range(n_images):
            colour = list(IMAGE_COLOURS)[rng.randint(len(IMAGE_COLOURS))]
            pixels = rng.randint(0, 256, size=(side, side, 3)).astype(np.uint8) // 4 + 96
            top, left = rng.randint(0, side // 2, size=2)
            pixels[top:top + side // 2, left:left + side // 2] = IMAGE_COLOURS[colour]
            name = f"{next_id}.{'jpg' if next_id % 2 else 'png'}"
            Image.fromarray(pixels).save(os.path.join(data_path, "flickr30k-images", name))
            mapping[str(next_id)] = name
            ids.append(str(next_id))
            captions += [f"a {colour} {IMAGE_OBJECTS[k]} in the picture" for k in range(5)]
            next_id += 1
        with open(os.path.join(data_path, "precomp", f"{split}_ids.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        with open(os.path.join(data_path, "precomp", f"{split}_caps.txt"), "w") as f:
            f.write("\n".join(captions) + "\n")
    with open(os.path.join(data_path, "id_mapping.json"), "w") as f:
        json.dump(mapping, f)
    return data_path, "f30k"
