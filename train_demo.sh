#!/bin/sh
# Train and evaluate X-Dim on the built-in synthetic demo, on CPU, in about 2 minutes.
# The demo data (data/demo/demo_precomp) and a tiny random BERT (data/demo/bert-tiny)
# are generated on first use by data/make_demo.py. Extra arguments go to train.py.
#
# Two settings differ from the paper's recipe because the demo's BERT is tiny and
# random, not pretrained: a higher learning rate (5e-4 barely moves it in a few
# epochs) and the sum-of-violations loss throughout (hardest negatives, the paper's
# choice after a 1-epoch warm-up, collapse it to constant scores at this scale).
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
IMG_DIM=64
OUT=${OUT:-runs/demo}

if [ ! -f data/demo/demo_precomp/testall_caps.txt ] || [ ! -f data/demo/bert-tiny/config.json ]; then
    "$PYTHON" data/make_demo.py --out data/demo --img_dim "$IMG_DIM"
fi

"$PYTHON" train.py --data_path data/demo --data_name demo_precomp --bert_path data/demo/bert-tiny \
    --img_dim "$IMG_DIM" --embed_size 64 --batch_size 64 --learning_rate 0.002 \
    --num_epochs 4 --lr_update 3 --vse_mean_warmup_epochs 4 \
    --workers 0 --log_step 50 --logger_name "$OUT/log" --model_name "$OUT/checkpoint" \
    --device cpu "$@"

"$PYTHON" eval.py --model_path "$OUT/checkpoint/model_best.pth" --data_path data/demo \
    --data_name demo_precomp --split test
