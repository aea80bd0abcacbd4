"""Check a downloaded precomp folder or raw-image dataset: counts, shapes, truncated files, NaN, captions.

    python check_data.py --data_path DATA                          # every folder under DATA
    python check_data.py --data_path DATA --data_name f30k_precomp
    python check_data.py --data_path data/f30k --workers 4         # raw images: a folder with id_mapping.json

For every split present, compares the counts with the Karpathy splits the paper uses
(Flickr30K 29000 / 1014 / 1000 images, COCO 113287 / 5000 / 5000 / 5000, 5 captions each;
other counts, as for one's own data, are warnings), checks the features are a float32
(n, 36, 2048) array whose file holds every byte its header announces, reads every value
once to find NaN or inf, and every caption to find undecodable or empty lines. Prints
one table and exits 0, or prints each problem as one `error:` line and exits 2.

A --data_path holding id_mapping.json is a raw-image dataset (precomp/{split}_caps.txt and
{split}_ids.txt, the images under images/ for a --data_name containing coco, else
flickr30k-images/, or under --image_root): it checks ids against captions, every id in the
mapping, every file present, then decodes every image once (grey, transparent and CMYK
images are warnings; truncated or unreadable files are errors).
"""
import argparse
import sys

from lib.cli.entry import entry_point
from lib.data.check import check_folders, check_image_dataset, is_image_dataset, report_table
from lib.errors import XDimError


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--data_path", required=True,
                        help="folder that holds f30k_precomp/, coco_precomp/, ...; or a raw-image dataset folder "
                             "(holding id_mapping.json)")
    parser.add_argument("--data_name", nargs="+", default=None, metavar="NAME",
                        help="folders of --data_path to check (default: every one holding split files); "
                             "raw images: the dataset's one name, choosing images/ (coco) or flickr30k-images/ "
                             "(default: the folder's own name)")
    parser.add_argument("--image_root", default=None,
                        help="raw images: the folder the paths of id_mapping.json start from, when not the "
                             "dataset's own images/ or flickr30k-images/")
    parser.add_argument("--workers", type=int, default=0,
                        help="raw images: processes decoding images (0: this one)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def run_checks(args):
    """The reports of the layout --data_path holds (XDimError for options that do not fit it)."""
    if not is_image_dataset(args.data_path):
        if args.image_root:
            raise XDimError(f"{args.data_path}: --image_root is for a raw-image dataset folder, one holding "
                            "id_mapping.json")
        return check_folders(args.data_path, args.data_name, progress=not args.no_progress)
    if args.data_name and len(args.data_name) > 1:
        raise XDimError(f"{args.data_path}: a raw-image dataset folder takes one --data_name, "
                        f"got {' '.join(args.data_name)}")
    return check_image_dataset(args.data_path, args.data_name[0] if args.data_name else None, args.image_root,
                               progress=not args.no_progress, workers=args.workers)


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    reports = run_checks(args)
    for report in reports:
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    errors = list(dict.fromkeys(error for report in reports for error in report.errors))  # a shared folder: once
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 2
    print(report_table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
