"""Train X-Dim on precomputed region features.

    python train.py --data_path DATA --data_name f30k_precomp --model_name runs/f30k ...
    torchrun --nproc_per_node 4 train.py ...   (--batch_size stays the global batch)

Options: `python train.py --help`. Bad input prints one `error: ...` line and exits 2.
"""
import sys

import lib.training.tb_logger  # noqa: F401  (first: selects protobuf's backend for TensorBoard)
from lib.runtime import distributed
from lib.errors import XDimError, first_line
from lib.cli.options import get_argument_parser


def main(argv=None):
    opt = get_argument_parser().parse_args(argv)
    from lib.training.trainer import train
    try:
        train(opt)
    except (XDimError, OSError) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
