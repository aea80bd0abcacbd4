"""Evaluate an X-Dim checkpoint, saved score matrices, or both (an ensemble) on a precomp split.

    python eval.py --model_path runs/f30k/model_best.pth --data_path DATA --data_name f30k_precomp --split test
    python eval.py --model_path runs/coco/model_best.pth --data_path DATA --data_name coco_precomp \
        --split testall --fold5 --save_sims coco_a.npy --json coco_a.json
    python eval.py --ensemble coco_a.npy coco_b.npy --fold5       # no model needed
    python eval.py --compare coco_a.npy coco_b.npy --fold5        # B - A with 95% bootstrap intervals
    python testall.py --ensemble coco_a.npy --data_path DATA --protocols coco,cxc,eccv  # needs eccv_caption

test.py (Flickr30K 1K test) and testall.py (COCO 5-fold 1K and 5K) are this
script with other defaults.
"""
import sys

from lib.cli.entry import entry_point
from lib.cli.evaluate import (
    check_compare_options,
    check_evaluation_options,
    evaluation_config,
    evaluation_parser,
    run_compare,
    run_evaluation,
)
from lib.cli.options import runtime_config


@entry_point
def main(argv=None, description=None, **defaults):
    """`defaults` preset some options (test.py, testall.py: data_name, split, fold5)."""
    args = evaluation_parser(description or __doc__.split("\n")[0], **defaults).parse_args(argv)
    if args.compare:
        check_compare_options(args)
        return run_compare(evaluation_config(args), runtime_config(args))
    check_evaluation_options(args)
    return run_evaluation(evaluation_config(args), runtime_config(args))


if __name__ == "__main__":
    sys.exit(main())
