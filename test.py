"""Flickr30K 1K test protocol: evaluate a checkpoint on f30k_precomp/test (1000 images, 5000 captions).

    python test.py --model_path runs/f30k/model_best.pth --data_path DATA

Every eval.py option applies (--bert_path, --device, --amp, --save_sims, --json, ...).
"""
import sys

from eval import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__.split("\n")[0], data_name="f30k_precomp", split="test", fold5=False))
