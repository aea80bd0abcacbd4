"""Command-line options, their checks, and their conversion into typed configs.

`get_argument_parser()` keeps every option of the official X-Dim parser with the
same name and default (some are accepted only so that old command lines keep
working; they are hidden from --help), and adds the options this codebase
introduces. `add_runtime_options` declares the options every script shares
(--bert_path, --device, --amp, --threads) once.

`train_configs(args)` turns train.py's parsed options into (ModelConfig,
TrainConfig, RuntimeConfig) once, at the entry point; nothing below it sees the
namespace.

`check_training_options` and `check_evaluation_options` are the one place where
each entry point checks its options, right after parsing and before any work:
the first bad one stops the run with one line naming it.
"""
import argparse
import math
import os
from dataclasses import fields

from lib.errors import XDimError
from lib.model.backbone import FULL_WIDTH, NO_BACKBONE_WEIGHTS, output_channels
from lib.model.backbone import SOURCES as BACKBONE_SOURCES
from lib.model.bert import DEFAULT_BERT
from lib.model.config import ENCODER_TYPES, MAX_EMBED_SIZE, MIN_EMBED_SIZE, ModelConfig
from lib.model.similarity import DEFAULT_SIMILARITY, SIMILARITIES, similarity_help
from lib.runtime.device import RuntimeConfig, resolve_device
from lib.training.config import TrainConfig

# Options of the official parser that this codebase does not use.
UNUSED = argparse.SUPPRESS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option help with a default only when it says something (not None, False, '' or []);
    the epilog (e.g. the list of similarities) kept line by line."""

    def _get_help_string(self, action):
        if action.default in (None, False, "", []):
            return action.help
        return super()._get_help_string(action)


def add_runtime_options(parser):
    """Options every script shares: which BERT, and where and how the work runs (RuntimeConfig)."""
    parser.add_argument("--bert_path", default=None,
                        help="BERT to use: a hub name or a local directory holding "
                             "config.json, vocab.txt and (for training) the weights. "
                             f"Default: {DEFAULT_BERT} for training; for a checkpoint, "
                             "the BERT architecture it was saved with.")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"],
                        help="autocast precision for encoders and similarity (loss stays float32)")
    parser.add_argument("--threads", default=0, type=int,
                        help="torch CPU threads; 0: OMP_NUM_THREADS if set, else all cores but one "
                             "(docs/training.md, \"CPU threads\")")
    return parser


def get_argument_parser(with_sim=True):
    """The training options; with_sim=False leaves --sim out (for scripts that set it themselves)."""
    parser = argparse.ArgumentParser(
        description="Train X-Dim on precomputed region features (precomp layout), or on image files "
                    "with a CNN backbone (--precomp_enc_type backbone).",
        epilog=similarity_help(), formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--data_path", default="../Flickr30K/",
        help="folder that holds {data_name}/ (backbone mode: the dataset folder itself, holding precomp/, "
             "id_mapping.json and the images)")
    add("--data_name", default="f30k_precomp",
        help="{coco,f30k}_precomp (backbone mode: a name containing 'coco' reads images/, any other "
             "flickr30k-images/)")
    add("--vocab_path", default="./vocab/", help=UNUSED)
    add("--margin", default=0.2, type=float, help="rank loss margin")
    add("--num_epochs", default=30, type=int, help="number of training epochs")
    add("--batch_size", default=128, type=int,
        help="global mini-batch size (split across processes under torchrun)")
    add("--word_dim", default=300, type=int, help=UNUSED)
    add("--embed_size", default=1024, type=int, help="joint embedding size d")
    add("--grad_clip", default=2.0, type=float, help="gradient norm clipping threshold (<= 0 disables)")
    add("--learning_rate", default=0.0005, type=float, help="base learning rate")
    add("--lr_update", default=15, type=int, help="epoch at which every learning rate is multiplied by 0.1")
    add("--optim", default="adam", choices=["adam"], help="optimizer: adam means AdamW, weight decay 1e-4")
    add("--workers", default=10, type=int, help="data loader worker processes")
    add("--log_step", default=100, type=int, help="iterations between log lines")
    add("--val_step", default=500, type=int,
        help="also validate (and keep model_best) every this many iterations inside an epoch")
    add("--logger_name", default="../log", help="folder for the TensorBoard events and the text log")
    add("--model_name", default="../checkpoint", help="folder for checkpoints")
    add("--resume", default="", type=str, metavar="PATH", help="checkpoint to resume from")
    add("--max_violation", action="store_true",
        help="hardest negatives from the first epoch (otherwise after --vse_mean_warmup_epochs)")
    add("--img_dim", default=2048, type=int,
        help="region feature size (raw-image mode: the backbone's channels, 32 x --backbone_width)")
    add("--no_imgnorm", action="store_true", help="do not L2-normalise image embeddings")
    add("--no_txtnorm", action="store_true", help="do not L2-normalise text embeddings")
    add("--precomp_enc_type", default="basic", choices=list(ENCODER_TYPES),
        help="basic: precomputed region features through FC + MLP; backbone: image files through a "
             "ResNet whose last feature map's cells are the regions, then the FC alone "
             "(docs/training.md, \"Raw images\")")
    add("--backbone_path", type=str, default="",
        help="backbone mode: the weight file of --backbone_source (docs/data.md says where each comes "
             "from; nothing is downloaded); 'none' starts from random weights (tests, demo)")
    add("--backbone_source", type=str, default="detector", choices=list(BACKBONE_SOURCES),
        help="backbone mode: detector (BUTD Faster R-CNN ResNet-101), imagenet (ResNet-101), "
             "imagenet_res50, imagenet_res152, imagenet_resnext (ResNeXt-101 32x8d), wsl (the same, "
             "Instagram-pretrained)")
    add("--backbone_width", type=int, default=FULL_WIDTH,
        help="backbone mode: the ResNet's stem width; 64 is the published network, smaller ones "
             "(the demo's 8) keep its blocks but are only for tests and demos")
    add("--image_root", type=str, default="",
        help="backbone mode: the image folder, when not inside --data_path "
             "(images/ for COCO, flickr30k-images/ otherwise)")
    add("--vse_mean_warmup_epochs", type=int, default=1,
        help="epochs that sum all violations before switching to hardest negatives")
    add("--reset_start_epoch", action="store_true", help="with --resume: start again from epoch 0")
    add("--backbone_warmup_epochs", type=int, default=5,
        help="backbone mode: epochs with 3, then 2, then 1 fixed blocks after the embedding warm-up, "
             "before the whole backbone trains")
    add("--embedding_warmup_epochs", type=int, default=2,
        help="backbone mode: first epochs with the whole backbone frozen; the next one ramps the "
             "loss up linearly from 0")
    add("--backbone_lr_factor", default=0.01, type=float,
        help="backbone mode: the backbone's learning rate is --learning_rate times this")
    add("--input_scale_factor", type=float, default=1,
        help="backbone mode: images are resized to int(256 x this) pixels square (2.0: 512, a 16 x 16 grid)")
    add_runtime_options(parser)
    add("--seed", default=0, type=int, help="random seed (python, numpy, torch)")
    add("--mask_padded_regions", action="store_true",
        help="exclude zero-padded (dropped) regions from attention; off reproduces the official code")
    if with_sim:
        add("--sim", default=DEFAULT_SIMILARITY, choices=list(SIMILARITIES), metavar="NAME",
            help="similarity function (listed below), stored in checkpoints")
    return parser


def default_options(**overrides):
    """train.py's options as parsed from an empty command line, with `overrides` applied
    (what a command line would give; for tests and notebooks)."""
    opt = get_argument_parser().parse_args([])
    for key, value in overrides.items():
        if not hasattr(opt, key):
            raise ValueError(f"unknown option {key!r}")
        setattr(opt, key, value)
    return opt


def _fields_of(config_class, args):
    return {f.name: getattr(args, f.name) for f in fields(config_class) if hasattr(args, f.name)}


def runtime_config(args):
    """The RuntimeConfig of parsed options that include `add_runtime_options`."""
    return RuntimeConfig(**_fields_of(RuntimeConfig, args))


def train_configs(args):
    """train.py's parsed options -> (ModelConfig, TrainConfig, RuntimeConfig).

    --bert_path (default bert-base-uncased) becomes ModelConfig.bert; in the backbone mode
    --img_dim left at its default becomes the backbone's channel count.
    """
    model = _fields_of(ModelConfig, args)
    model.pop("bert_config", None)
    model["bert"] = args.bert_path or DEFAULT_BERT
    if args.precomp_enc_type == "backbone" and args.img_dim == 2048:
        model["img_dim"] = output_channels(args.backbone_width)
    return ModelConfig(**model), TrainConfig(**_fields_of(TrainConfig, args)), runtime_config(args)


# ---------------------------------------------------------------- checks

# Rules for numeric options: (test, what the value must be).
POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a positive number")
NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
CLIP = (math.isfinite, "a finite number (<= 0 disables clipping)")
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
COUNT = (lambda v: v >= 0, "0 or more")
WORKERS = (lambda v: v >= 0, "0 (load in the main process) or more")
THREADS = (lambda v: v >= 0, "0 (automatic) or more")
EMBED_SIZE = (lambda v: MIN_EMBED_SIZE <= v <= MAX_EMBED_SIZE, f"in {MIN_EMBED_SIZE}..{MAX_EMBED_SIZE} (the paper uses 1024)")
# Checked in this order; the first failure is reported.
TRAINING_RANGES = {
    "learning_rate": POSITIVE, "margin": NON_NEGATIVE, "grad_clip": CLIP, "num_epochs": AT_LEAST_1,
    "lr_update": COUNT, "vse_mean_warmup_epochs": COUNT, "batch_size": AT_LEAST_1, "embed_size": EMBED_SIZE,
    "img_dim": AT_LEAST_1, "workers": WORKERS, "log_step": AT_LEAST_1, "seed": COUNT, "threads": THREADS,
    "embedding_warmup_epochs": COUNT, "backbone_warmup_epochs": COUNT, "backbone_lr_factor": NON_NEGATIVE,
    "backbone_width": AT_LEAST_1, "input_scale_factor": POSITIVE,
}
EVALUATION_RANGES = {
    "batch_size": AT_LEAST_1, "workers": WORKERS, "fold_images": AT_LEAST_1, "rows_per_block": COUNT,
    "threads": THREADS,
}


def check_ranges(opt, ranges):
    """XDimError naming the first option of `ranges` ({name: (test, requirement)}) whose value fails its test."""
    for name, (test, requirement) in ranges.items():
        value = getattr(opt, name)
        if not test(value):
            raise XDimError(f"--{name} {value}: must be {requirement}")


def nearest_existing(path):
    """`path`, or its nearest parent that exists."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_folder(option, folder, shown=None):
    """XDimError unless `folder` is a writable folder or can be created as one; the message names
    the option's value `shown` (default `folder`), e.g. an index whose parent `folder` must be writable."""
    existing = nearest_existing(os.path.abspath(folder))
    shown = folder if shown is None else shown
    if not os.path.isdir(existing):
        raise XDimError(f"{option} {shown}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise XDimError(f"{option} {shown}: {existing} is not writable")


def check_output_file(option, path):
    """XDimError unless `path` can be written: its folder exists and is writable, it is no folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise XDimError(f"{option} {path}: is a folder, give a file name")
    if not os.path.isdir(folder):
        raise XDimError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise XDimError(f"{option} {path}: not writable")


def check_backbone_path(path, source):
    """XDimError unless --backbone_path names a file (or 'none'); its content is checked when it loads."""
    from lib.model.backbone import WEIGHT_FILES
    if not path:
        raise XDimError(f"--backbone_path: the backbone mode needs the weight file of --backbone_source "
                        f"{source}: {WEIGHT_FILES[source]} ('{NO_BACKBONE_WEIGHTS}': random weights)")
    if path != NO_BACKBONE_WEIGHTS and not os.path.isfile(path):
        raise XDimError(f"--backbone_path {path}: no such file; --backbone_source {source} expects "
                        f"{WEIGHT_FILES[source]}")


def check_training_options(opt):
    """Check train.py's options before any work -> the torch.device that --device names.

    Numbers must lie in their range, --logger_name and --model_name must be writable
    folders (or creatable), and the device must exist here. Raises XDimError naming the
    first bad option.
    """
    check_ranges(opt, TRAINING_RANGES)
    if opt.precomp_enc_type == "backbone":
        check_backbone_path(opt.backbone_path, opt.backbone_source)
    check_output_folder("--logger_name", opt.logger_name)
    check_output_folder("--model_name", opt.model_name)
    return resolve_device(opt.device)


def check_evaluation_options(args):
    """Check eval.py's (test.py's, testall.py's) options before any work -> the torch.device.

    Something to evaluate must be given, numbers must lie in their range, the --json
    and --save_sims files must be writable and the device must exist here. Raises
    XDimError naming the first bad option.
    """
    if not args.model_path and not args.ensemble:
        raise XDimError("nothing to evaluate: give --model_path and/or --ensemble FILE...")
    if args.shortlist is not None and (args.shortlist < 1 or not args.model_path):
        raise XDimError(f"--shortlist {args.shortlist}: needs K >= 1 and --model_path "
                        f"(the global vectors come from the model)")
    check_ranges(args, EVALUATION_RANGES)
    for option, path in (("--json", args.json), ("--save_sims", args.save_sims)):
        if path:
            check_output_file(option, path)
    return resolve_device(args.device)
