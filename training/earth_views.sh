#!/usr/bin/env bash
# Rebuild the three shipped satellite-view models (assets/earth-rfm, earth-flow, earth-diffusion) on one GPU:
# render + embed the views, train the three processes side by side, evaluate them on the held-out views.
#
#   bash training/earth_views.sh                 # one H200: 8 minutes to trained models, then the evaluation
#   TRAIN_SECONDS=300 bash training/earth_views.sh
#
# TRAIN_SECONDS caps the training wall time: a run still going then is stopped and its last checkpoint
# (every 1000 steps) is exported instead. Every step is resumable: finished shards are skipped and
# `training.train` resumes from runs/earth-*/last.pt.
set -euo pipefail
DATA=${DATA:-data/earth}
RUNS=${RUNS:-runs}
TRAIN_VIEWS=${TRAIN_VIEWS:-600000}
HELDOUT_VIEWS=${HELDOUT_VIEWS:-2000}
TRAIN_SECONDS=${TRAIN_SECONDS:-100000}
PYTHON=${PYTHON:-python}
TRAIN_ARGS=${TRAIN_ARGS:-}   # extra training flags, e.g. for a smoke test: "--dim 16 --depth 1 --batch-size 16"
EVAL_ARGS=${EVAL_ARGS:-}
EVAL=${EVAL:-1}              # 0: stop after exporting the models
CONFIG=training/configs/earth_views.yaml

$PYTHON -m training.earth_views_data shards --out "$DATA/train" --split-seed 0 --num-views "$TRAIN_VIEWS" --batch-size 1024
$PYTHON -m training.earth_views_data shards --out "$DATA/heldout" --split-seed 1 --num-views "$HELDOUT_VIEWS" \
    --shard-size 1000 --batch-size 1000

declare -A NAMES=([rfm_s2]=earth-rfm [flow_r3]=earth-flow [diffusion_r3]=earth-diffusion)
for process in rfm_s2 flow_r3 diffusion_r3; do
    out="$RUNS/${NAMES[$process]}"
    mkdir -p "$out"
    timeout --signal=INT "$TRAIN_SECONDS" $PYTHON -m training.train --config "$CONFIG" --process "$process" \
        --train-shards "$DATA/train" --output-dir "$out" $TRAIN_ARGS >"$out/train.log" 2>&1 &
done
wait || true

for process in rfm_s2 flow_r3 diffusion_r3; do
    out="$RUNS/${NAMES[$process]}"
    if [ ! -f "$out/model/model.safetensors" ]; then
        step=$($PYTHON -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=False)['position']['step'])" "$out/last.pt")
        echo "${NAMES[$process]}: stopped at step $step; exporting that checkpoint"
        $PYTHON -m training.train --config "$CONFIG" --process "$process" --train-shards "$DATA/train" \
            --output-dir "$out" $TRAIN_ARGS --total-steps "$step" >>"$out/train.log" 2>&1
    fi
    tail -n 2 "$out/metrics.csv"
done

[ "$EVAL" = 1 ] || exit 0
# The RFM model: the full table (300 views per row for NLL / localizability, 16 samples each) and the
# normalisation check with 16,384 importance samples on 8 views. The R^3 models: their exact likelihood ODE
# is slower, so 50 views and 4 samples per row.
$PYTHON -m training.earth_views_eval "$RUNS/earth-rfm/model" "$DATA/heldout" --normalisation-points 16384 --record \
    --output "$RUNS/earth-rfm/model/earth_views_eval.json" $EVAL_ARGS >"$RUNS/earth-rfm/eval.log" 2>&1 &
for name in earth-flow earth-diffusion; do
    $PYTHON -m training.earth_views_eval "$RUNS/$name/model" "$DATA/heldout" --likelihood-images 50 \
        --localizability-samples 4 --normalisation-views 0 --record --output "$RUNS/$name/model/earth_views_eval.json" \
        $EVAL_ARGS >"$RUNS/$name/eval.log" 2>&1 &
done
wait
tail -n 8 "$RUNS"/earth-*/eval.log
echo "ship with: for n in earth-rfm earth-flow earth-diffusion; do cp $RUNS/\$n/model/{config.json,model.safetensors} assets/\$n/; done"
