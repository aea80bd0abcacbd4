"""analyze.py's command: its options (AnalyzeConfig's fields), their checks, the config built once,
and the run, which writes the report into --out as one whole.

The report is built in a staging folder beside --out and swapped into place when complete
(lib.formats.atomic), under a lock that refuses a second analyze.py into the same --out; an
existing --out is replaced only when it is empty or holds a report. The figures and statistics
themselves are lib.analysis's.
"""
import argparse
import json
import logging
import os

from lib.analysis.config import AnalyzeConfig
from lib.cli.options import (
    RUNTIME_RANGES,
    HelpFormatter,
    add_config_options,
    add_runtime_options,
    check_output_folder,
    check_ranges,
    config_from_args,
)
from lib.errors import XDimError
from lib.formats.atomic import atomic_folder


def analyze_parser(description, epilog):
    """analyze.py's options: one per AnalyzeConfig field, plus the runtime ones."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)
    add_config_options(parser, AnalyzeConfig)
    return add_runtime_options(parser)


def analyze_config(args):
    """The AnalyzeConfig of analyze.py's checked options."""
    return config_from_args(AnalyzeConfig, args, bert_path=args.bert_path)


def check_analyze_options(args):
    """Check analyze.py's options before any work (XDimError naming the first bad one): --image goes
    with --caption (and nothing of a split), --photo with --pair, the files exist, --out is writable,
    --threads is not negative."""
    from lib.retrieval.folder import check_photo_file
    check_ranges(args, RUNTIME_RANGES)
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
    check_output_folder("--out", args.out)


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





def run_analysis(config, runtime):
    """Load the model (and the split when needed), write the report; -> summary dict.

    The report is built in a staging folder and replaces --out whole (lib.formats.atomic),
    under a lock that refuses a second analyze.py into the same --out.
    """
    from lib.model.xdim_model import XDimModel
    runtime.apply_threads()
    device = runtime.torch_device()
    with report_lock(config.out):
        check_replaceable(config.out)
        model = XDimModel.from_checkpoint(config.model_path, config.bert_path, device, runtime.amp)
        write = photo_writer(model, config) if config.image is not None else split_writer(model, config)
        with atomic_folder(config.out) as staging:
            return write(staging)


def photo_writer(model, config):
    """--image and --caption: a writer of the photo's one figure and summary.json into a folder."""
    from lib.analysis import attention
    from lib.formats.atomic import write_json

    def write(folder):
        photo, name = attention.photo_report(model, config.model_path, config.image, config.caption, folder)
        summary = {"photo": photo, "figures": [name]}
        write_json(os.path.join(folder, "summary.json"), summary, indent=1)
        return summary
    return write


def split_writer(model, config):
    """The mask figures and, from a split (opened and checked here), --words and --pair: a writer of
    the report into a folder."""
    from lib.analysis import statistics as analysis
    from lib.evaluation import scoring
    split = encoder = None
    if config.words or config.pair is not None:
        if model.config.uses_backbone:
            raise XDimError(f"{config.model_path}: a raw-image (backbone) checkpoint; --words and --pair read "
                            "region features (the mask figures work without them; --image and --caption draw "
                            "a photo)")
        split, encoder, _ = scoring.open_model_split(model, config.data_path, config.data_name, config.split)
    return lambda folder: analysis.write_report(model, folder, split, encoder, config.words, config.top_k, config.pair,
                                                progress=config.progress, photo=config.photo)


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
