"""Write the synthetic demo dataset (real precomp layout, or image files) and a tiny local BERT.

    python data/make_demo.py --out data/demo            # region features
    python data/make_demo.py --out data/demo --images   # 64 x 64 JPEGs, the raw-image layout

creates data/demo/demo_precomp/{train,dev,test,testall}_{ims.npy,caps.txt} (as used by
train_demo.sh) or, with --images, data/demo/demo_images/ (precomp/{split}_{caps,ids}.txt,
id_mapping.json, flickr30k-images/*.jpg), and data/demo/bert-tiny/ (config, vocabulary and
random weights).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.cli.entry import entry_point  # noqa: E402
from lib.data import synthetic  # noqa: E402


@entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=synthetic.DEMO_FOLDER,
                        help="folder to write demo_precomp/ (demo_images/ with --images) and bert-tiny/ into")
    parser.add_argument("--images", action="store_true",
                        help="write the demo as JPEG files in the raw-image layout (demo_images/) instead of "
                             "region features")
    parser.add_argument("--image_size", type=int, default=synthetic.DEMO_IMAGE_SIZE,
                        help="side of the square demo images in pixels (with --images; at least 32)")
    parser.add_argument("--img_dim", type=int, default=synthetic.DEMO_IMG_DIM, help="region feature size")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the data is a function of it)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="std of the per-region noise around each prototype (prototypes have std 1)")
    for split, n_images in synthetic.DEMO_SPLITS.items():
        parser.add_argument(f"--{split}_images", type=int, default=n_images,
                            help=f"images in the {split} split (5 captions each)")
    parser.add_argument("--train_options", action="store_true",
                        help="print the demo's train.py options (train_demo.sh, ablate.py) and exit")
    args = parser.parse_args(argv)
    if args.train_options:
        print(" ".join(f"--{name} {value}" for name, value in synthetic.DEMO_TRAINING.items()))
        return 0
    sizes = {split: getattr(args, f"{split}_images") for split in synthetic.DEMO_SPLITS}
    if args.images:
        if args.image_size < 32:
            parser.error(f"--image_size must be at least 32 (four rows of tiles), got {args.image_size}")
        data_path, data_name, bert_path = synthetic.write_demo_images(args.out, sizes=sizes, seed=args.seed,
                                                            size=args.image_size)
        print(f"demo images: --data_path {data_path} --data_name {data_name}")
        print(f"tiny BERT: --bert_path {bert_path}")
        return 0
    data_path, data_name, bert_path = synthetic.write_demo_dataset(
        args.out, img_dim=args.img_dim, sizes=sizes, seed=args.seed, noise=args.noise)
    print(f"demo data: --data_path {data_path} --data_name {data_name} --img_dim {args.img_dim}")
    print(f"tiny BERT: --bert_path {bert_path}")


if __name__ == "__main__":
    sys.exit(main())
