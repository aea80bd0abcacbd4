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
import sys

from lib.cli.ablate import ablation_configs, ablation_parser, check_ablation_options, run_ablation_command
from lib.cli.entry import entry_point


@entry_point
def main(argv=None):
    args = ablation_parser(__doc__.split("\n")[0]).parse_args(argv)
    check_ablation_options(args)
    run_ablation_command(*ablation_configs(args))


if __name__ == "__main__":
    sys.exit(main())
