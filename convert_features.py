"""Convert bottom-up-attention region features into the precomp layout.

    python convert_features.py --tsv feats.tsv.0 feats.tsv.1 --out data/mine --split gallery
    python convert_features.py --npz_dir extracted/ --out data/mine --split gallery

Writes {split}_ims.npy (n, 36, feature size), {split}_ids.txt, {split}_boxes.npy and
{split}_image_info.npy (width, height, real regions) into --out. Images with more than
--regions boxes keep the first ones; images with fewer are zero-padded. Bad input prints
one `error: ...` line naming the file and line, exits 2 and leaves --out unchanged.
"""
import argparse
import os
import sys

from lib.cli.entry import entry_point
from lib.cli.options import check_output_folder, nearest_existing
from lib.data import butd as features
from lib.formats.atomic import check_outputs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tsv", nargs="+", metavar="FILE",
                        help="TSV files of the original extractor (image_id, image_w, image_h, "
                             "num_boxes, boxes, features), converted in the order given")
    source.add_argument("--npz_dir", metavar="DIR",
                        help="folder of bottom-up-attention.pytorch .npz files (x, bbox, num_bbox, "
                             "image_w, image_h), converted in file-name order")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the split into")
    parser.add_argument("--split", required=True, help="split name: the files are {split}_ims.npy, ...")
    parser.add_argument("--regions", type=int, default=features.REGIONS,
                        help="regions per image in the output (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files of the split")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def remove_empty_folders(folder, stop):
    """Remove `folder` and its parents below `stop` while they are empty (what a failed run created)."""
    while folder != stop and os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
        folder = os.path.dirname(folder)


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_output_folder("--out", args.out)
    check_outputs([("--out", path) for path in features.output_paths(args.out, args.split).values()],
                  [("--tsv", path) for path in args.tsv or []] + [("--npz_dir", args.npz_dir)])
    existing = nearest_existing(os.path.abspath(args.out))
    try:
        if args.tsv:
            n_images, records = features.count_tsv_records(args.tsv), features.read_tsv(args.tsv)
        else:
            paths = features.list_npz(args.npz_dir)
            n_images, records = len(paths), features.read_npz(paths)
        summary = features.convert(records, n_images, args.out, args.split, args.regions,
                                   args.overwrite, not args.no_progress)
    except BaseException:
        remove_empty_folders(os.path.abspath(args.out), existing)
        raise
    print(f"wrote {summary.n_images} images x {summary.regions} regions x {summary.feature_dim} features "
          f"({summary.truncated} cut to {summary.regions} regions, {summary.padded} zero-padded):")
    for path in summary.paths.values():
        print(f"  {path}")


if __name__ == "__main__":
    sys.exit(main())
