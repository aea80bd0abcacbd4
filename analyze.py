"""Look inside an X-Dim checkpoint: figures and statistics of its learned dimension dependencies.

    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis
    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis \\
        --data_path data/demo --data_name demo_precomp --split test --words dog cat --pair 0 0

Writes PNG figures and summary.json into --out (docs/analysis.md), each
atomically; re-run into the same --out, the previous report's figures that the new
summary.json does not list are removed.
Needs matplotlib and scipy (pip install matplotlib scipy).
"""
import argparse
import json
import os
import sys

from lib.cli.entry import entry_point
from lib.cli.options import add_runtime_options, check_output_folder
from lib.errors import XDimError
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


def remove_unlisted_figures(out, previous, current):
    """Delete the figures of the previous report in `out` that the new one does not list. -> their paths."""
    removed = []
    for name in sorted(set(previous) - set(current)):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def run(args, device):
    """Load the model (and the split when needed), write the report; -> summary dict.

    A report already in --out is replaced: the figures its summary.json listed and
    the new one does not are removed once the new summary.json is written.
    """
    from lib.analysis import statistics as analysis
    from lib.evaluation import scoring
    from lib.model.xdim_model import XDimModel
    model = XDimModel.from_checkpoint(args.model_path, args.bert_path, device, args.amp)
    split = encoder = None
    if args.words or args.pair is not None:
        if model.config.uses_backbone:
            raise XDimError(f"{args.model_path}: a raw-image (backbone) checkpoint; --words and --pair read "
                            "region features (the mask figures work without them)")
        split, encoder, _ = scoring.open_model_split(model, args.data_path, args.data_name, args.split)
    previous = previous_figures(args.out)
    summary = analysis.write_report(model, args.out, split, encoder, args.words, args.top_k, args.pair,
                                    progress=not args.no_progress)
    for path in remove_unlisted_figures(args.out, previous, summary["figures"]):
        print(f"removed {path}, a figure of the previous report that this one does not list")
    return summary


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
