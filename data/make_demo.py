"""Write the synthetic demo dataset (real precomp layout) and a tiny local BERT.

    python data/make_demo.py --out data/demo

creates data/demo/demo_precomp/{train,dev,test,testall}_{ims.npy,caps.txt} and
data/demo/bert-tiny/ (config, vocabulary and random weights), as used by train_demo.sh.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.cli.entry import entry_point  # noqa: E402
from lib.data.synthetic import DEMO_FOLDER, DEMO_IMG_DIM, DEMO_SPLITS, DEMO_TRAINING, write_demo_dataset  # noqa: E402


@entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=DEMO_FOLDER,
                        help="folder to write demo_precomp/ and bert-tiny/ into")
    parser.add_argument("--img_dim", type=int, default=DEMO_IMG_DIM, help="region feature size")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the data is a function of it)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="std of the per-region noise around each prototype (prototypes have std 1)")
    for split, n_images in DEMO_SPLITS.items():
        parser.add_argument(f"--{split}_images", type=int, default=n_images,
                            help=f"images in the {split} split (5 captions each)")
    parser.add_argument("--train_options", action="store_true",
                        help="print the demo's train.py options (train_demo.sh, ablate.py) and exit")
    args = parser.parse_args(argv)
    if args.train_options:
        print(" ".join(f"--{name} {value}" for name, value in DEMO_TRAINING.items()))
        return 0
    sizes = {split: getattr(args, f"{split}_images") for split in DEMO_SPLITS}
    data_path, data_name, bert_path = write_demo_dataset(
        args.out, img_dim=args.img_dim, sizes=sizes, seed=args.seed, noise=args.noise)
    print(f"demo data: --data_path {data_path} --data_name {data_name} --img_dim {args.img_dim}")
    print(f"tiny BERT: --bert_path {bert_path}")


if __name__ == "__main__":
    sys.exit(main())
