"""Train every similarity variant on the same data with the same seed; print and save one table.

    python ablate.py                                   # the synthetic demo, about 10 minutes on 2 CPU cores
    python ablate.py --variants xdim cosine --num_epochs 2
    python ablate.py --data_path DATA --data_name f30k_precomp --bert_path bert-base-uncased \
        --img_dim 2048 --embed_size 1024 --batch_size 128 --learning_rate 5e-4 --num_epochs 25 \
        --lr_update 15 --vse_mean_warmup_epochs 1 --workers 4 --device auto --out runs/ablation_f30k

Every train.py option applies to all variants alike; the defaults are the demo's
(train_demo.sh), generated under data/demo on first use. --variants replaces --sim;
each variant's checkpoints and log go to OUT/NAME/checkpoint and OUT/NAME/log, so
--model_name and --logger_name are refused.
"""
import os
import sys

from lib.cli.entry import entry_point
from lib.cli.options import check_output_folder
from lib.cli.train import check_training_options, get_argument_parser, train_configs
from lib.data.synthetic import DEMO_TRAINING
from lib.errors import XDimError
from lib.evaluation.compare import check_resamples, check_scipy
from lib.formats.atomic import write_json
from lib.model.similarity import SIMILARITIES
from lib.training.ablation import (
    DEFAULT_VARIANTS,
    ablation_table,
    ensure_demo_data,
    intervals_table,
    run_seeds,
    seeds_table,
    summarize_seeds,
    variant_intervals,
)

# Options ablate.py sets itself for every variant: giving one is an error, not silently overridden.
SET_PER_VARIANT = {"model_name": "OUT/NAME/checkpoint", "logger_name": "OUT/NAME/log"}


def build_parser():
    parser = get_argument_parser(with_sim=False)
    parser.description = __doc__.split("\n")[0]
    parser.set_defaults(**DEMO_TRAINING, **{name: None for name in SET_PER_VARIANT})
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


def check_not_given(args):
    """XDimError for an option that every variant sets itself."""
    for name, value in SET_PER_VARIANT.items():
        if getattr(args, name) is not None:
            raise XDimError(f"--{name}: ablate.py sets it for every variant ({value}); "
                            "choose the folder with --out instead")


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_not_given(args)
    json_path = os.path.join(args.out, "ablation.json")
    if args.seeds < 1:
        raise XDimError(f"--seeds {args.seeds}: must be at least 1")
    if len(args.variants) > 1:
        check_resamples("--n_resamples", args.n_resamples)
        check_scipy()
    check_output_folder("--out", args.out)
    args.sim, args.model_name, args.logger_name = args.variants[0], args.out, args.out
    check_training_options(args)
    model_config, train_config, runtime = train_configs(args)
    ensure_demo_data(train_config.data_path, train_config.data_name, model_config.img_dim)
    seeds = list(range(args.seed, args.seed + args.seeds))
    rows = run_seeds(model_config, train_config, runtime, args.variants, args.split, args.out, args.seeds)
    summary = summarize_seeds(rows, args.variants)
    intervals = variant_intervals(rows, args.variants, args.n_resamples, seed=args.seed)
    write_json(json_path, {"split": args.split, "model": model_config.as_dict() | {"bert_config": None},
                           "training": train_config.as_dict(), "seeds": seeds, "variants": rows,
                           "summary": summary, "baseline": args.variants[0], "intervals": intervals})
    if args.seeds == 1:
        print(ablation_table(rows, f"{args.data_name} {args.split}, {len(rows)} variants, seed {args.seed}:"))
    else:
        print(seeds_table(summary, f"{args.data_name} {args.split}, {len(args.variants)} variants, mean ± std "
                                   f"over seeds {seeds[0]}..{seeds[-1]}:"))
    if intervals:
        print(intervals_table(intervals, args.variants[0]))
    print(f"written: {json_path}")


if __name__ == "__main__":
    sys.exit(main())
