#!/bin/sh
# Train X-Dim on COCO image files with a CNN backbone (grid features), VSE-infinity's grid recipe.
#   sh train_grid_coco.sh DATA_PATH BACKBONE_PATH OUTPUT_DIR [extra train.py options...]
# DATA_PATH is the dataset folder: precomp/{train,dev,test}_{caps,ids}.txt, id_mapping.json and
# images/ (or give --image_root). BACKBONE_PATH is the backbone's weight file, by default
# VSE-infinity's BUTD original_updown_backbone.pth (BACKBONE_SOURCE=imagenet, wsl, ... picks
# another network; docs/data.md says where each file comes from). OUTPUT_DIR receives
# checkpoints (OUTPUT_DIR/checkpoint) and logs (OUTPUT_DIR/log). All three may come from the
# environment instead; further arguments go to train.py (a later option overrides an earlier
# one). NPROC=N launches N processes through torchrun (one per GPU); --batch_size stays the
# global batch. WORKERS sets image-decoding workers per process (default 8; docs/training.md).
set -e
case "${1:-}" in -*|"") ;; *) DATA_PATH=$1; shift ;; esac
case "${1:-}" in -*|"") ;; *) BACKBONE_PATH=$1; shift ;; esac
case "${1:-}" in -*|"") ;; *) OUTPUT_DIR=$1; shift ;; esac
: "${DATA_PATH:?give DATA_PATH (the dataset folder holding precomp/ and id_mapping.json) as first argument or in the environment}"
: "${BACKBONE_PATH:?give BACKBONE_PATH (the backbone weight file, e.g. original_updown_backbone.pth) as second argument or in the environment}"
OUTPUT_DIR=${OUTPUT_DIR:-runs/coco_grid}
BACKBONE_SOURCE=${BACKBONE_SOURCE:-detector}
NPROC=${NPROC:-1}
WORKERS=${WORKERS:-8}
if [ "$NPROC" -gt 1 ]; then
  LAUNCH="torchrun --standalone --nproc_per_node $NPROC"
else
  LAUNCH="python"
fi
exec $LAUNCH "$(dirname "$0")/train.py" \
  --data_path "$DATA_PATH" --data_name coco \
  --logger_name "$OUTPUT_DIR/log" --model_name "$OUTPUT_DIR/checkpoint" \
  --precomp_enc_type backbone --backbone_source "$BACKBONE_SOURCE" --backbone_path "$BACKBONE_PATH" \
  --input_scale_factor 2.0 --num_epochs 25 --lr_update 15 --learning_rate 5e-4 --batch_size 128 \
  --embed_size 1024 --vse_mean_warmup_epochs 1 --embedding_warmup_epochs 1 --backbone_warmup_epochs 0 \
  --backbone_lr_factor 0.01 --workers "$WORKERS" --log_step 200 \
  "$@"
