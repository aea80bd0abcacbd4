"""ablate.py's command: train.py's options with the demo's defaults plus AblationConfig's, their
checks, the configs built from them once, and the run (train every variant, print and save one table).

The variants, seeds and tables themselves are lib.training.ablation's.
"""
import argparse
import os

from lib.cli.options import AT_LEAST_1, add_config_options, check_output_folder, check_ranges, config_from_args
from lib.cli.train import check_training_options, get_argument_parser, train_configs
from lib.data.synthetic import DEMO_TRAINING
from lib.errors import XDimError
from lib.evaluation.compare import check_resamples, check_scipy
from lib.formats.atomic import write_json
from lib.training.ablation import (
    AblationConfig,
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


def ablation_parser(description):
    """train.py's options but --sim, with the demo's defaults (train_demo.sh), and the ablation's."""
    parser = get_argument_parser(with_sim=False)
    parser.description = description
    parser.set_defaults(**DEMO_TRAINING, **{name: None for name in SET_PER_VARIANT})
    add_config_options(parser.add_argument_group("ablation"), AblationConfig)
    return parser


def check_ablation_options(args):
    """Check ablate.py's options before any work (XDimError naming the first bad one): no option that
    every variant sets, at least one seed, the bootstrap's resamples (and scipy) when there is a
    difference to bootstrap, a writable --out, then every training option as train.py checks it."""
    for name, value in SET_PER_VARIANT.items():
        if getattr(args, name) is not None:
            raise XDimError(f"--{name}: ablate.py sets it for every variant ({value}); "
                            "choose the folder with --out instead")
    check_ranges(args, {"seeds": AT_LEAST_1})
    if len(args.variants) > 1:
        check_resamples("--n_resamples", args.n_resamples)
        check_scipy()
    check_output_folder("--out", args.out)
    check_training_options(first_variant_options(args))


def first_variant_options(args):
    """A copy of the parsed options as train.py would get them for the first variant (args unchanged)."""
    return argparse.Namespace(**dict(vars(args), sim=args.variants[0], model_name=args.out, logger_name=args.out))


def ablation_configs(args):
    """ablate.py's checked options -> (ModelConfig, TrainConfig, RuntimeConfig, AblationConfig); the
    trainer's output folders are replaced per variant (lib.training.ablation.variant_configs)."""
    return (*train_configs(first_variant_options(args)), config_from_args(AblationConfig, args))


def run_ablation_command(model_config, train_config, runtime, ablation):
    """Train and evaluate every variant (writing the demo data first if it is asked for and missing),
    write OUT/ablation.json, print the table (mean ± std with several seeds) and the intervals."""
    json_path = os.path.join(ablation.out, "ablation.json")
    variants, title = list(ablation.variants), f"{train_config.data_name} {ablation.split}"
    ensure_demo_data(train_config.data_path, train_config.data_name, model_config.img_dim)
    seeds = list(range(train_config.seed, train_config.seed + ablation.seeds))
    rows = run_seeds(model_config, train_config, runtime, variants, ablation.split, ablation.out, ablation.seeds)
    summary = summarize_seeds(rows, variants)
    intervals = variant_intervals(rows, variants, ablation.n_resamples, seed=train_config.seed)
    write_json(json_path, {"split": ablation.split, "model": model_config.as_dict() | {"bert_config": None},
                           "training": train_config.as_dict(), "seeds": seeds, "variants": rows,
                           "summary": summary, "baseline": variants[0], "intervals": intervals})
    if ablation.seeds == 1:
        print(ablation_table(rows, f"{title}, {len(rows)} variants, seed {train_config.seed}:"))
    else:
        print(seeds_table(summary, f"{title}, {len(variants)} variants, mean ± std "
                                   f"over seeds {seeds[0]}..{seeds[-1]}:"))
    if intervals:
        print(intervals_table(intervals, variants[0]))
    print(f"written: {json_path}")
