"""Train X-Dim on precomputed region features, or on image files with a CNN backbone.

    python train.py --data_path DATA --data_name f30k_precomp --model_name runs/f30k ...
    python train.py --precomp_enc_type backbone --backbone_path original_updown_backbone.pth \
        --data_path /data/f30k --data_name f30k --input_scale_factor 2.0 ...   (train_grid_f30k.sh)
    torchrun --nproc_per_node 4 train.py ...   (--batch_size stays the global batch)

Options: `python train.py --help`. Bad input prints one `error: ...` line and exits 2.
"""
import sys

from lib.cli.entry import entry_point
from lib.cli.train import check_training_options, get_argument_parser, train_configs


@entry_point
def main(argv=None):
    args = get_argument_parser().parse_args(argv)
    check_training_options(args)
    from lib.training.trainer import train
    train(*train_configs(args))


if __name__ == "__main__":
    sys.exit(main())
