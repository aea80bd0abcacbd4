"""Command-line options.

`get_argument_parser()` keeps every option of the official X-Dim parser with the
same name and default (some are accepted only so that old command lines and
pickled option namespaces keep working; their help says so), and adds the
options this codebase introduces.
"""
import argparse

from lib.bert import DEFAULT_BERT
from lib.similarity import DEFAULT_SIMILARITY, SIMILARITIES, similarity_help


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option help with defaults, wrapped; the epilog (the list of similarities) kept line by line."""


def add_runtime_options(parser):
    """Options shared by training and evaluation: where BERT and the work live."""
    parser.add_argument("--bert_path", default=None,
                        help="BERT to use: a hub name or a local directory holding "
                             "config.json, vocab.txt and (for training) the weights. "
                             f"Default: {DEFAULT_BERT} for training; for a checkpoint, "
                             "the BERT architecture it was saved with.")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"],
                        help="autocast precision for encoders and similarity (loss stays float32)")
    return parser


def get_argument_parser(with_sim=True):
    """The training options; with_sim=False leaves --sim out (for scripts that set it themselves)."""
    parser = argparse.ArgumentParser(
        description="Train X-Dim on precomputed region features (precomp layout).",
        epilog=similarity_help(), formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--data_path", default="../Flickr30K/", help="folder that holds {data_name}/")
    add("--data_name", default="f30k_precomp", help="{coco,f30k}_precomp")
    add("--vocab_path", default="./vocab/", help="unused (GloVe/GRU vocabulary of the family); kept for compatibility")
    add("--margin", default=0.2, type=float, help="rank loss margin")
    add("--num_epochs", default=30, type=int, help="number of training epochs")
    add("--batch_size", default=128, type=int,
        help="global mini-batch size (split across processes under torchrun)")
    add("--word_dim", default=300, type=int, help="unused (GRU word embedding size); kept for compatibility")
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
    add("--img_dim", default=2048, type=int, help="region feature size")
    add("--no_imgnorm", action="store_true", help="do not L2-normalise image embeddings")
    add("--no_txtnorm", action="store_true", help="do not L2-normalise text embeddings")
    add("--precomp_enc_type", default="basic", choices=["basic"],
        help="image encoder for precomputed features (only basic: FC + MLP)")
    add("--backbone_path", type=str, default="", help="unused (raw-image backbone); kept for compatibility")
    add("--backbone_source", type=str, default="detector", help="unused; kept for compatibility")
    add("--vse_mean_warmup_epochs", type=int, default=1,
        help="epochs that sum all violations before switching to hardest negatives")
    add("--reset_start_epoch", action="store_true", help="with --resume: start again from epoch 0")
    add("--backbone_warmup_epochs", type=int, default=5, help="unused; kept for compatibility")
    add("--embedding_warmup_epochs", type=int, default=2, help="unused; kept for compatibility")
    add("--backbone_lr_factor", default=0.01, type=float, help="unused; kept for compatibility")
    add("--input_scale_factor", type=float, default=1, help="unused; kept for compatibility")
    add_runtime_options(parser)
    add("--seed", default=0, type=int, help="random seed (python, numpy, torch)")
    add("--mask_padded_regions", action="store_true",
        help="exclude zero-padded (dropped) regions from attention; off reproduces the official code")
    if with_sim:
        add("--sim", default=DEFAULT_SIMILARITY, choices=list(SIMILARITIES), metavar="NAME",
            help="similarity function (listed below), stored in checkpoints")
    return parser


def default_options(**overrides):
    """The parser's defaults as a namespace, with `overrides` applied (for library use)."""
    opt = get_argument_parser().parse_args([])
    for key, value in overrides.items():
        if not hasattr(opt, key):
            raise ValueError(f"unknown option {key!r}")
        setattr(opt, key, value)
    return opt
