"""Look inside an X-Dim checkpoint: figures and statistics of its learned dimension dependencies.

    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis
    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis \\
        --data_path data/demo --data_name demo_precomp --split test --words dog cat --pair 0 0
    # a raw-image checkpoint: what each word of a sentence looked at in a photo
    python analyze.py --model_path runs/grid/checkpoint/model_best.pth --out runs/grid/analysis \
        --image beach.jpg --caption "a dog running on the beach"

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
    add("--photo", default=None, metavar="FILE",
        help="with --pair on region features: the pair image's file; its most attended detector boxes "
             "({split}_boxes.npy) are drawn on it")
    add("--image", default=None, metavar="FILE",
        help="a photo, with --caption, for a raw-image (backbone-mode) checkpoint: each word's attention as a "
             "heat map over it (only this figure is drawn)")
    add("--caption", default=None, metavar="TEXT", help="the sentence for --image")
    add("--no_progress", action="store_true", help="hide the progress bars")
    add_runtime_options(parser)
    return parser


def check_photo_options(args):
    """--image goes with --caption (and nothing of a split), --photo with --pair; the files exist."""
    from lib.retrieval.folder import check_photo_file
    if (args.image is None) != (args.caption is None):
        raise XDimError("--image and --caption go together: a photo and the sentence whose words to draw on it")
    if args.image is not None:
        if args.words or args.pair is not None:
            raise XDimError("--image draws one photo and caption; run --words and --pair separately")
        check_photo_file(args.image, "--image")
    if args.photo is not None:
        if args.pair is None:
            raise XDimError("--photo is the image file of --pair's image; give --pair IMAGE CAPTION too")
        check_photo_file(args.photo, "--photo")


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
    from lib.model.xdim_model import XDimModel
    model = XDimModel.from_checkpoint(args.model_path, args.bert_path, device, args.amp)
    previous = previous_figures(args.out)
    if args.image is not None:
        summary = photo_summary(model, args)
    else:
        summary = split_summary(model, args)
    for path in remove_unlisted_figures(args.out, previous, summary["figures"]):
        print(f"removed {path}, a figure of the previous report that this one does not list")
    return summary


def photo_summary(model, args):
    """--image and --caption: the one figure of the photo and summary.json -> the summary."""
    from lib.analysis.attention import photo_report
    from lib.formats.atomic import write_json
    photo, name = photo_report(model, args.model_path, args.image, args.caption, args.out)
    summary = {"photo": photo, "figures": [name]}
    write_json(os.path.join(args.out, "summary.json"), summary, indent=1)
    return summary


def split_summary(model, args):
    """The mask figures and, from a split, --words and --pair -> the summary."""
    from lib.analysis import statistics as analysis
    from lib.evaluation import scoring
    split = encoder = None
    if args.words or args.pair is not None:
        if model.config.uses_backbone:
            raise XDimError(f"{args.model_path}: a raw-image (backbone) checkpoint; --words and --pair read "
                            "region features (the mask figures work without them; --image and --caption draw "
                            "a photo)")
        split, encoder, _ = scoring.open_model_split(model, args.data_path, args.data_name, args.split)
    return analysis.write_report(model, args.out, split, encoder, args.words, args.top_k, args.pair,
                                 progress=not args.no_progress, photo=args.photo)


def describe(summary, out):
    """A few lines for the console."""
    if "photo" in summary:
        photo = summary["photo"]
        words = ", ".join(f"{token} {100 * share:.0f}%" for token, share in zip(photo["tokens"], photo["shares"]))
        return (f"{photo['image']} and '{photo['caption']}': score {photo['score']:.4f}; shares of the words: "
                f"{words}\nwrote {summary['figures'][0]} and summary.json to {out}")
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
    check_photo_options(args)
    check_output_folder("--out", args.out)
    apply_threads(args.threads)
    summary = run(args, resolve_device(args.device))
    print(describe(summary, args.out))


if __name__ == "__main__":
    sys.exit(main())
