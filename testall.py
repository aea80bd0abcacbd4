"""COCO protocols: evaluate a checkpoint on coco_precomp/testall (5000 images, 25000 captions),
as five 1K folds (each fold and their mean, "COCO 1K") and as one 5K matrix ("COCO 5K").

    python testall.py --model_path runs/coco/model_best.pth --data_path DATA
    python testall.py --ensemble coco_a.npy --data_path DATA --protocols coco,cxc,eccv   # CxC, ECCV Caption

Every eval.py option applies (--bert_path, --device, --amp, --save_sims, --json, ...).
"""
import sys

from eval import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__.split("\n\n")[0].replace("\n", " "),
                  data_name="coco_precomp", split="testall", fold5=True))
