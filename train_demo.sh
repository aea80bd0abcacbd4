#!/bin/sh
# Train and evaluate X-Dim on the built-in synthetic demo, on CPU, in about 2 minutes.
# The demo data (data/demo/demo_precomp) and a tiny random BERT (data/demo/bert-tiny)
# are generated on first use by data/make_demo.py. Extra arguments go to train.py.
#
# The demo's training options live in lib/data/synthetic.py (DEMO_TRAINING, with why
# two of them differ from the paper's recipe); make_demo.py --train_options prints them.
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/demo}

if [ ! -f data/demo/demo_precomp/testall_caps.txt ] || [ ! -f data/demo/bert-tiny/config.json ]; then
    "$PYTHON" data/make_demo.py
fi
DEMO_OPTIONS=$("$PYTHON" data/make_demo.py --train_options)

# shellcheck disable=SC2086  # the options are words without spaces, split on purpose
"$PYTHON" train.py $DEMO_OPTIONS --logger_name "$OUT/log" --model_name "$OUT/checkpoint" "$@"

"$PYTHON" eval.py --model_path "$OUT/checkpoint/model_best.pth" --data_path data/demo \
    --data_name demo_precomp --split test
