"""Look inside an X-Dim checkpoint: figures and statistics of its learned dimension dependencies.

    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis
    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis \\
        --data_path data/demo --data_name demo_precomp --split test --words dog cat --pair 0 0
    # a raw-image checkpoint: what each word of a sentence looked at in a photo
    python analyze.py --model_path runs/grid/checkpoint/model_best.pth --out runs/grid/analysis \\
        --image beach.jpg --caption "a dog running on the beach"

Writes PNG figures and summary.json into --out (docs/analysis.md) as one whole: the
report is built in a staging folder beside --out and swapped into place when complete,
so --out holds one report or the previous one, never a mix. An existing --out is
replaced only when it is empty or a report of analyze.py; two runs into one --out at
the same time are refused. Needs matplotlib and scipy (pip install matplotlib scipy).
"""
import sys

from lib.cli.analyze import analyze_config, analyze_parser, check_analyze_options, describe, run_analysis
from lib.cli.entry import entry_point
from lib.cli.options import runtime_config


@entry_point
def main(argv=None):
    args = analyze_parser(__doc__.split("\n")[0], __doc__.split("\n", 2)[2]).parse_args(argv)
    check_analyze_options(args)
    config = analyze_config(args)
    print(describe(run_analysis(config, runtime_config(args)), config.out))


if __name__ == "__main__":
    sys.exit(main())
