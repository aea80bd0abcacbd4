"""Look inside an X-Dim checkpoint: figures and statistics of its learned dimension dependencies.

    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis
    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis \\
        --data_path data/demo --data_name demo_precomp --split test --words dog cat --pair 0 0

Writes PNG figures and summary.json into --out (docs/analysis.md) as one whole: the
report is built in a staging folder beside --out and swapped into place when complete,
so --out holds one report or the previous one, never a mix. An existing --out is
replaced only when it is empty or a report of analyze.py; two runs into one --out at
the same time are refused. Needs matplotlib and scipy (pip install matplotlib scipy).
"""
import argparse
import json
import logging
import os
import sys

from lib.cli.entry import entry_point
from lib.cli.options import add_runtime_options, check_output_folder
from lib.errors import XDimError
from lib.formats.atomic import atomic_folder
from lib.runtime.device import apply_threads, resolve_device


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    add = parser.add_argument
    add("--model_path", required=True, help="checkpoint to analyse (ours or the official release's)")
    add("--out", required=True, help="folder for the figures and summary.json (created if needed)")
    add("--data_path", default=None,
        help="folder holding {data_name}/, for --words and --pair (default: the checkpoint's)")
    add("--data_name", default=None, help="f30k_precomp, coco_precomp, ... (default: the checkpoint's)")
    add("--split", default="test", help="split whose captions and images --words and --pair use (default: test)")
    add("--words", nargs="+", default=[], metavar="WORD",
        help="words whose per-dimension participation probabilities to draw, e.g. --words dog man")
    add("--top_k", type=int, default=None,
        help="a dimension takes part in an occurrence of a word when it is among the top_k "
             "of its correspondence vector (default: 5%% of the embedding size)")
    add("--pair", nargs=2, type=int, default=None, metavar=("IMAGE", "CAPTION"),
        help="draw the words x regions attention of this image and caption (indices in the split)")
    add("--no_progress", action="store_true", help="hide the progress bars")
    add_runtime_options(parser)
    return parser


def previous_figures(out):
    """The figure names the summary.json already in `out` lists (plain .png names only; [] without one)."""
    try:
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
            names = json.load(f).get("figures", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in names if isinstance(name, str) and name.endswith(".png")
            and name == os.path.basename(name)]


def check_replaceable(out):
    """XDimError unless --out is missing, empty, or holds only a report (summary.json and the
    figures it lists): the new report replaces the folder whole."""
    if not os.path.isdir(out):
        return
    others = sorted(set(os.listdir(out)) - {"summary.json", *previous_figures(out)})
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise XDimError(f"--out {out}: holds {others[0]}{more}, not part of a report of analyze.py; the "
                        f"report replaces the folder whole, so give a new or empty folder (nothing was changed)")


def report_lock(out):
    """The lock that keeps two analyze.py runs from writing one --out: `<out>.analyze.lock` beside it."""
    from lib.training import run_lock
    parent, name = os.path.split(os.path.abspath(out))
    return run_lock.hold_locks([parent], logging.getLogger("xdim.analyze"), name=f"{name}.analyze.lock",
                               use=run_lock.LockUse("analyze.py", "--out"))


def run(args, device):
    """Load the model (and the split when needed), write the report; -> summary dict.

    The report is built in a staging folder and replaces --out whole (lib.formats.atomic),
    under a lock that refuses a second analyze.py into the same --out.
    """
    from lib.analysis import statistics as analysis
    from lib.evaluation import scoring
    from lib.model.xdim_model import XDimModel
    with report_lock(args.out):
        check_replaceable(args.out)
        model = XDimModel.from_checkpoint(args.model_path, args.bert_path, device, args.amp)
        split = encoder = None
        if args.words or args.pair is not None:
            if model.config.uses_backbone:
                raise XDimError(f"{args.model_path}: a raw-image (backbone) checkpoint; --words and --pair read "
                                "region features (the mask figures work without them)")
            split, encoder, _ = scoring.open_model_split(model, args.data_path, args.data_name, args.split)
        with atomic_folder(args.out) as staging:
            return analysis.write_report(model, staging, split, encoder, args.words, args.top_k, args.pair,
                                         progress=not args.no_progress)


def describe(summary, out):
    """A few lines for the console."""
    mask = summary["mask"]
    deps = mask["dependencies_per_dimension"]
    lines = [f"d {summary['embed_size']}: mask density {mask['mask_density']:.4g}, mean threshold "
             f"{mask['mean_threshold']:.4f}, mask temperature {mask['t_mask']:.4g}, attention temperature "
             f"{mask['t_attn']:.4g}; dependencies per dimension min {deps['min']} median {deps['median']:g} "
             f"max {deps['max']}"]
    for word, concept in summary.get("concepts", {}).items():
        top = ", ".join(f"{t['dimension']} ({t['probability']:.2f})" for t in concept["top_dimensions"][:8])
        lines.append(f"'{word}': {concept['occurrences']} occurrences; top dimensions {top}")
    if "pair" in summary:
        pair = summary["pair"]
        lines.append(f"pair image {pair['image']} caption {pair['caption']}: score {pair['score']:.4f}")
    lines.append(f"wrote {len(summary['figures'])} figures and summary.json to {out}")
    return "\n".join(lines)


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_output_folder("--out", args.out)
    apply_threads(args.threads)
    summary = run(args, resolve_device(args.device))
    print(describe(summary, args.out))


if __name__ == "__main__":
    sys.exit(main())
