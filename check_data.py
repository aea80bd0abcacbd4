"""Check a downloaded precomp folder: counts, shapes, truncated files, NaN, captions.

    python check_data.py --data_path DATA                          # every folder under DATA
    python check_data.py --data_path DATA --data_name f30k_precomp

For every split present, compares the counts with the Karpathy splits the paper uses
(Flickr30K 29000 / 1014 / 1000 images, COCO 113287 / 5000 / 5000 / 5000, 5 captions each;
other counts, as for one's own data, are warnings), checks the features are a float32
(n, 36, 2048) array whose file holds every byte its header announces, reads every value
once to find NaN or inf, and every caption to find undecodable or empty lines. Prints
one table and exits 0, or prints each problem as one `error:` line and exits 2.
"""
import argparse
import sys

from lib.data.check import check_folders, report_table
from lib.errors import XDimError


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--data_path", required=True, help="folder that holds f30k_precomp/, coco_precomp/, ...")
    parser.add_argument("--data_name", nargs="+", default=None, metavar="NAME",
                        help="folders of --data_path to check (default: every one holding split files)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        reports = check_folders(args.data_path, args.data_name, progress=not args.no_progress)
    except (XDimError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for report in reports:
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    errors = [error for report in reports for error in report.errors]
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 2
    print(report_table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
