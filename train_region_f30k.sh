#!/bin/sh
# Train X-Dim on Flickr30K BUTD region features with the paper's settings.
#   sh train_region_f30k.sh DATA_PATH OUTPUT_DIR [extra train.py options...]
# DATA_PATH holds f30k_precomp/; OUTPUT_DIR receives checkpoints (OUTPUT_DIR/checkpoint)
# and logs (OUTPUT_DIR/log). Both may come from the environment instead of the first
# two arguments; further arguments go to train.py (a later option overrides an earlier
# one). NPROC=N launches N processes through torchrun (one per GPU); --batch_size stays
# the global batch. WORKERS sets data loader workers per process (default 4).
set -e
case "${1:-}" in -*|"") ;; *) DATA_PATH=$1; shift ;; esac
case "${1:-}" in -*|"") ;; *) OUTPUT_DIR=$1; shift ;; esac
: "${DATA_PATH:?give DATA_PATH (folder holding f30k_precomp/) as first argument or in the environment}"
OUTPUT_DIR=${OUTPUT_DIR:-runs/f30k_region}
NPROC=${NPROC:-1}
WORKERS=${WORKERS:-4}
if [ "$NPROC" -gt 1 ]; then
  LAUNCH="torchrun --standalone --nproc_per_node $NPROC"
else
  LAUNCH="python"
fi
exec $LAUNCH "$(dirname "$0")/train.py" \
  --data_path "$DATA_PATH" --data_name f30k_precomp \
  --logger_name "$OUTPUT_DIR/log" --model_name "$OUTPUT_DIR/checkpoint" \
  --num_epochs 25 --lr_update 15 --learning_rate 5e-4 --batch_size 128 --embed_size 1024 \
  --vse_mean_warmup_epochs 1 --workers "$WORKERS" --log_step 200 --precomp_enc_type basic \
  "$@"
