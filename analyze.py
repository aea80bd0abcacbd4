"""Look inside an X-Dim checkpoint: figures and statistics of its learned dimension dependencies.

    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis
    python analyze.py --model_path runs/demo/checkpoint/model_best.pth --out runs/demo/analysis \\
        --data_path data/demo --data_name demo_precomp --split test --words dog cat --pair 0 0
    # a raw-image checkpoint: what each word of a sentence looked at in a photo
    python analyze.py --model_path runs/grid/checkpoint/model_best.pth --out runs/grid/analysis \
        --image beach.jpg --caption "a dog running on the beach"

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
    from lib.model.xdim_model import XDimModel
    with report_lock(args.out):
        check_replaceable(args.out)
        model = XDimModel.from_checkpoint(args.model_path, args.bert_path, device, args.amp)
        write = photo_writer(model, args) if args.image is not None else split_writer(model, args)
        with atomic_folder(args.out) as staging:
            return write(staging)


def photo_writer(model, args):
    """--image and --caption: a writer of the photo's one figure and summary.json into a folder."""
    from lib.analysis import attention
    from lib.formats.atomic import write_json

    def write(folder):
        photo, name = attention.photo_report(model, args.model_path, args.image, args.caption, folder)
        summary = {"photo": photo, "figures": [name]}
        write_json(os.path.join(folder, "summary.json"), summary, indent=1)
        return summary
    return write


def split_writer(model, args):
    """The mask figures and, from a split (opened and checked here), --words and --pair: a writer of
    the report into a folder."""
    from lib.analysis import statistics as analysis
    from lib.evaluation import scoring
    split = encoder = None
    if args.words or args.pair is not None:
        if model.config.uses_backbone:
            raise XDimError(f"{args.model_path}: a raw-image (backbone) checkpoint; --words and --pair read "
                            "region features (the mask figures work without them; --image and --caption draw "
                            "a photo)")
        split, encoder, _ = scoring.open_model_split(model, args.data_path, args.data_name, args.split)
    return lambda folder: analysis.write_report(model, folder, split, encoder, args.words, args.top_k, args.pair,
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
