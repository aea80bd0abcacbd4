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
import json
import os
import sys

import lib.training.tb_logger  # noqa: F401  (first: selects protobuf's backend for TensorBoard)
from lib.training.ablation import DEFAULT_VARIANTS, DEMO_SETTINGS, ablation_table, ensure_demo_data, run_seeds
from lib.training.ablation import intervals_table, seeds_table, summarize_seeds, variant_intervals
from lib.errors import XDimError
from lib.cli.options import get_argument_parser
from lib.evaluation.compare import check_scipy
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
    group.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="train every variant with seeds --seed, --seed + 1, ..., --seed + N - 1 "
                            "(into OUT/seed_S/NAME when N > 1); the table shows mean ± std over them")
    group.add_argument("--n_resamples", type=int, default=10000,
                       help="bootstrap resamples of the interval of each variant's difference to the first "
                            "(needs scipy)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    json_path = os.path.join(args.out, "ablation.json")
    options = {k: v for k, v in vars(args).items() if k not in ("variants", "split", "out", "seeds", "n_resamples")}
    seeds = list(range(args.seed, args.seed + args.seeds))
    try:
        for option, value in (("--seeds", args.seeds), ("--n_resamples", args.n_resamples)):
            if value < 1:
                raise XDimError(f"{option} {value}: must be at least 1")
        if len(args.variants) > 1:
            check_scipy()
        ensure_demo_data(args)
        rows = run_seeds(argparse.Namespace(**options), args.variants, args.split, args.out, args.seeds)
        summary = summarize_seeds(rows, args.variants)
        intervals = variant_intervals(rows, args.variants, args.n_resamples, seed=args.seed)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"split": args.split, "options": options, "seeds": seeds, "variants": rows,
                       "summary": summary, "baseline": args.variants[0], "intervals": intervals}, f, indent=2)
    except (XDimError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.seeds == 1:
        print(ablation_table(rows, f"{args.data_name} {args.split}, {len(rows)} variants, seed {args.seed}:"))
    else:
        print(seeds_table(summary, f"{args.data_name} {args.split}, {len(args.variants)} variants, mean ± std "
                                   f"over seeds {seeds[0]}..{seeds[-1]}:"))
    if intervals:
        print(intervals_table(intervals, args.variants[0]))
    print(f"written: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
