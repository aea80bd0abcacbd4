#!/bin/sh
# Train and evaluate X-Dim from image files (the backbone mode) on the built-in synthetic demo,
# on CPU, in about 3 minutes. The demo images (data/demo/demo_images: 64 x 64 JPEGs in the
# official layout, 500 training images) and a tiny random BERT (data/demo/bert-tiny) are
# generated on first use by data/make_demo.py --images. Nothing is downloaded: the backbone is
# a ResNet-101 of stem width 8 (the real blocks, 1/8 of the channels) from random weights
# (--backbone_path none), frozen in epoch 0, then trained whole at 0.1 x the lr. It learns
# slowly (a random CNN, 2 x 2 grid cells): the point is to see every step run. Extra
# arguments go to train.py.
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/demo_grid}
DATA=data/demo/demo_images

if [ ! -f "$DATA/precomp/test_caps.txt" ] || [ ! -f data/demo/bert-tiny/config.json ]; then
    "$PYTHON" data/make_demo.py --images --train_images 500 --dev_images 100 --test_images 100 \
        --testall_images 100
fi

"$PYTHON" train.py --data_path "$DATA" --data_name demo_images --bert_path data/demo/bert-tiny \
    --precomp_enc_type backbone --backbone_path none --backbone_width 8 --input_scale_factor 0.25 \
    --embed_size 64 --batch_size 64 --learning_rate 0.002 --num_epochs 3 --lr_update 100 \
    --vse_mean_warmup_epochs 4 --embedding_warmup_epochs 1 --backbone_warmup_epochs 0 \
    --backbone_lr_factor 0.1 --workers 1 --log_step 20 --device cpu \
    --logger_name "$OUT/log" --model_name "$OUT/checkpoint" "$@"

"$PYTHON" eval.py --model_path "$OUT/checkpoint/model_best.pth" --split test
