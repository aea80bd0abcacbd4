#!/bin/sh
# Train and evaluate X-Dim on the built-in synthetic demo, on CPU, in a few minutes.
# The demo data (data/demo/demo_precomp) and a tiny random BERT (data/demo/bert-tiny)
# are generated on first use by data/make_demo.py. Extra arguments go to train.py.
# At this tiny scale the default learning rate (5e-4) barely moves in a few epochs; 2e-3 does.
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
IMG_DIM=64

if [ ! -f data/demo/demo_precomp/testall_caps.txt ] || [ ! -f data/demo/bert-tiny/config.json ]; then
    "$PYTHON" data/make_demo.py --out data/demo --img_dim "$IMG_DIM"
fi

"$PYTHON" train.py --data_path data/demo --data_name demo_precomp --bert_path data/demo/bert-tiny \
    --img_dim "$IMG_DIM" --embed_size 64 --batch_size 64 --learning_rate 0.002 --num_epochs 4 --lr_update 3 \
    --workers 0 --log_step 50 --logger_name runs/demo/log --model_name runs/demo/checkpoint \
    --device cpu "$@"

"$PYTHON" eval.py --model_path runs/demo/checkpoint/model_best.pth --data_path data/demo \
    --data_name demo_precomp --split test
