"""train.py's command (ablate.py extends it): its options, their checks, and the configs built from them.

`get_argument_parser()` keeps every option of the official X-Dim parser with the same name
and default (some are accepted only so that old command lines keep working; they are hidden
from --help) and adds the options this codebase introduces, one per field of TrainConfig,
ModelConfig and RuntimeConfig. `check_training_options` checks them before any work, and
`train_configs(args)` turns them into (ModelConfig, TrainConfig, RuntimeConfig) once, at the
entry point; nothing below it sees the namespace. The training itself is
lib.training.trainer.train.
"""
import argparse
import math
import os

from lib.cli.options import (
    AT_LEAST_1,
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    RUNTIME_RANGES,
    WORKERS,
    HelpFormatter,
    add_config_options,
    add_runtime_options,
    check_output_folder,
    check_ranges,
    config_from_args,
    runtime_config,
)
from lib.errors import XDimError
from lib.model.backbone import NO_BACKBONE_WEIGHTS, output_channels
from lib.model.bert import DEFAULT_BERT
from lib.model.config import MAX_EMBED_SIZE, MIN_EMBED_SIZE, ModelConfig
from lib.model.loss import loss_help
from lib.model.similarity import similarity_help
from lib.runtime.device import resolve_device
from lib.training.config import TrainConfig

# Options of the official parser that nothing uses: accepted with their type and default, so
# that old command lines run, and hidden from --help.
OFFICIAL_UNUSED = {"vocab_path": (str, "./vocab/"), "word_dim": (int, 300)}


def get_argument_parser(with_sim=True):
    """train.py's options: one per field of TrainConfig, ModelConfig and RuntimeConfig, plus the
    official parser's unused ones (hidden); with_sim=False leaves --sim out (for scripts that set it)."""
    parser = argparse.ArgumentParser(
        description="Train X-Dim on precomputed region features (precomp layout), or on image files "
                    "with a CNN backbone (--precomp_enc_type backbone).",
        epilog=similarity_help() + "\n\n" + loss_help(), formatter_class=HelpFormatter)
    add_config_options(parser.add_argument_group("training"), TrainConfig)
    add_config_options(parser.add_argument_group("model"), ModelConfig, skip=() if with_sim else ("sim",))
    add_runtime_options(parser.add_argument_group("runtime"))
    for name, (kind, default) in OFFICIAL_UNUSED.items():
        parser.add_argument(f"--{name}", type=kind, default=default, help=argparse.SUPPRESS)
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


def train_configs(args):
    """train.py's parsed options -> (ModelConfig, TrainConfig, RuntimeConfig).

    --bert_path (default bert-base-uncased) becomes ModelConfig.bert; in the backbone mode
    --img_dim left at its default becomes the backbone's channel count.
    """
    img_dim = args.img_dim
    if args.precomp_enc_type == "backbone" and img_dim == 2048:
        img_dim = output_channels(args.backbone_width)
    model = config_from_args(ModelConfig, args, bert=args.bert_path or DEFAULT_BERT, img_dim=img_dim)
    return model, config_from_args(TrainConfig, args), runtime_config(args)




CLIP = (math.isfinite, "a finite number (<= 0 disables clipping)")
EMBED_SIZE = (lambda v: MIN_EMBED_SIZE <= v <= MAX_EMBED_SIZE, f"in {MIN_EMBED_SIZE}..{MAX_EMBED_SIZE} (the paper uses 1024)")
# Checked in this order; the first failure is reported.
TRAINING_RANGES = {
    "learning_rate": POSITIVE, "margin": NON_NEGATIVE, "grad_clip": CLIP, "num_epochs": AT_LEAST_1,
    "lr_update": COUNT, "vse_mean_warmup_epochs": COUNT, "batch_size": AT_LEAST_1, "embed_size": EMBED_SIZE,
    "img_dim": AT_LEAST_1, "workers": WORKERS, "log_step": AT_LEAST_1, "seed": COUNT, **RUNTIME_RANGES,
    "embedding_warmup_epochs": COUNT, "backbone_warmup_epochs": COUNT, "backbone_lr_factor": NON_NEGATIVE,
    "backbone_width": AT_LEAST_1, "input_scale_factor": POSITIVE,
}



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
