"""Train every similarity variant on the same data with the same seed; print and save one table.

    python ablate.py                                   # the synthetic demo, about 10 minutes on 2 CPU cores
    python ablate.py --variants xdim cosine --num_epochs 2
    python ablate.py --data_path DATA --data_name f30k_precomp --bert_path bert-base-uncased \
        --img_dim 2048 --embed_size 1024 --batch_size 128 --learning_rate 5e-4 --num_epochs 25 \
        --lr_update 15 --vse_mean_warmup_epochs 1 --workers 4 --device auto --out runs/ablation_f30k

Every train.py option applies to all variants alike; the defaults are the demo's
(train_demo.sh), generated under data/demo on first use. --variants replaces --sim;
--model_name and --logger_name are set per variant (OUT/NAME/checkpoint, OUT/NAME/log).
"""
import argparse
import os
import sys

import lib.training.tb_logger  # noqa: F401  (first: selects protobuf's backend for TensorBoard)
from lib.training.ablation import DEFAULT_VARIANTS, DEMO_SETTINGS, ablation_table, ensure_demo_data, run_ablation
from lib.errors import XDimError
from lib.formats.atomic import write_json
from lib.cli.options import get_argument_parser
from lib.model.similarity import SIMILARITIES


def build_parser():
    parser = get_argument_parser(with_sim=False)
    parser.description = __doc__.split("\n")[0]
    parser.set_defaults(**DEMO_SETTINGS)
    group = parser.add_argument_group("ablation")
    group.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(SIMILARITIES),
                       metavar="NAME", help="similarities to train (listed below)")
    group.add_argument("--split", default="test", help="split every variant is evaluated on")
    group.add_argument("--out", default=os.path.join("runs", "ablation"),
                       help="folder for each variant's checkpoint/ and log/, and the table as ablation.json")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    json_path = os.path.join(args.out, "ablation.json")
    options = {k: v for k, v in vars(args).items() if k not in ("variants", "split", "out")}
    try:
        ensure_demo_data(args)
        rows = run_ablation(argparse.Namespace(**options), args.variants, args.split, args.out)
        write_json(json_path, {"split": args.split, "options": options, "variants": rows})
    except (XDimError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(ablation_table(rows, f"{args.data_name} {args.split}, {len(rows)} variants, seed {args.seed}:"))
    print(f"written: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
