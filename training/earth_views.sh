#!/usr/bin/env bash
# Rebuild the three shipped satellite-view models (assets/earth-rfm, earth-flow, earth-diffusion) on one GPU:
#   data:  gather the allowed Earth mosaics (training/earth_views_mosaics.py), render + embed training views of
#          every mosaic (both encoder features) and clean held-out views of each mosaic;
#   folds: leave one mosaic family out (default: etopo1, then the Natural Earth pair), train the default (RFM)
#          process once per encoder feature without it, evaluate on the held-out family's views, pick the
#          feature with the smaller median error on held-out land views;
#   final: train the three processes on all mosaics with that feature;
#   evaluate: evaluate them on every mosaic's held-out views and record the table in each model's config.json.
#
#   bash training/earth_views.sh                          # one H200: data 3.5 min, folds 4.5 min, final + evaluate ~6 min
#   STAGES="data final evaluate" FEATURE=efficientnet_lite0_grid2 bash training/earth_views.sh   # no folds
#
# TRAIN_SECONDS caps each training stage's wall time: a run still going then is stopped and its last checkpoint
# (every 1000 steps) is exported instead. Every step is resumable: finished shards are skipped and
# `training.train` resumes from <run>/last.pt.
set -euo pipefail
MOSAICS=${MOSAICS:-data/mosaics}
DATA=${DATA:-data/earth}
RUNS=${RUNS:-runs}
TRAIN_VIEWS=${TRAIN_VIEWS:-400000}       # in all, split over the mosaics by their manifest weights
HELDOUT_VIEWS=${HELDOUT_VIEWS:-2000}     # per mosaic: clean 256 px renderings, split seed 1
FOLD_FAMILIES=${FOLD_FAMILIES:-etopo1,natural-earth}
FOLD_KEYS=${FOLD_KEYS:-efficientnet_lite0,efficientnet_lite0_grid2}
FOLD_STEPS=${FOLD_STEPS:-4000}
FINAL_STEPS=${FINAL_STEPS:-8000}
FEATURE=${FEATURE:-auto}                 # the final models' embedding key; auto: the folds' winner
STAGES=${STAGES:-data folds final evaluate}
TRAIN_SECONDS=${TRAIN_SECONDS:-100000}
PYTHON=${PYTHON:-python}
TRAIN_ARGS=${TRAIN_ARGS:-}   # extra training flags, e.g. for a smoke test: "--dim 16 --depth 1 --batch-size 16"
EVAL_ARGS=${EVAL_ARGS:-}
CONFIG=training/configs/earth_views.yaml

stage() { [[ " $STAGES " == *" $1 "* ]]; }
folders() { $PYTHON -m training.earth_views_data folders --mosaics-dir "$MOSAICS" "$@"; }

# train PROCESS OUT SHARDS KEY STEPS DESCRIPTION (in the background; export the last checkpoint if stopped)
train() {
    mkdir -p "$2"
    local args=(--config "$CONFIG" --process "$1" --train-shards "$3" --embedding-key "$4" --encoder "$4"
                --train-data "$6" --output-dir "$2")
    (timeout --signal=INT "$TRAIN_SECONDS" $PYTHON -m training.train "${args[@]}" --total-steps "$5" $TRAIN_ARGS \
        >"$2/train.log" 2>&1 || true
     if [ ! -f "$2/model/model.safetensors" ]; then
        step=$($PYTHON -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=False)['position']['step'])" "$2/last.pt")
        echo "$2: stopped at step $step; exporting that checkpoint" | tee -a "$2/train.log"
        $PYTHON -m training.train "${args[@]}" --total-steps "$step" $TRAIN_ARGS >>"$2/train.log" 2>&1
     fi
     tail -n 1 "$2/metrics.csv") &
}

if stage data; then
    echo "$(date +%T) data"
    [ -f "$MOSAICS/mosaics.json" ] || $PYTHON -m training.earth_views_mosaics --out "$MOSAICS"
    keys=$FOLD_KEYS
    stage folds || keys=${FEATURE/auto/efficientnet_lite0}
    $PYTHON -m training.earth_views_data shards --mosaics-dir "$MOSAICS" --out "$DATA/train" --split-seed 0 \
        --num-views "$TRAIN_VIEWS" --keys "$keys" --batch-size 1024
    $PYTHON -m training.earth_views_data shards --mosaics-dir "$MOSAICS" --out "$DATA/heldout" --split-seed 1 \
        --num-views "$HELDOUT_VIEWS" --per-mosaic --no-augment --size 256 --keys "$keys" --shard-size 1000 --batch-size 1000
fi

if stage folds; then
    echo "$(date +%T) folds"
    for family in ${FOLD_FAMILIES//,/ }; do
        for key in ${FOLD_KEYS//,/ }; do
            train rfm_s2 "$RUNS/folds/${family}__$key" "$(folders --root "$DATA/train" --key "$key" --exclude-family "$family")" \
                "$key" "$FOLD_STEPS" "$TRAIN_VIEWS augmented views of the allowed Earth mosaics except the $family family"
        done
    done
    wait
    for family in ${FOLD_FAMILIES//,/ }; do
        for key in ${FOLD_KEYS//,/ }; do
            for mosaic in $(folders --root "$DATA/heldout" --key "$key" --only-family "$family" --names); do
                out="$RUNS/folds/${family}__$key"
                $PYTHON -m training.earth_views_eval "$out/model" "$DATA/heldout/$mosaic/{key}" --steps 32 \
                    --likelihood-images 100 --normalisation-views 0 --no-prior --output "$out/eval-$mosaic.json" $EVAL_ARGS \
                    >"$out/eval-$mosaic.log" 2>&1 &
            done
        done
    done
    wait
    # a failed fold evaluation must not cost the final models: report it and fall back to the pooled feature
    $PYTHON -m training.earth_views_folds "$RUNS/folds" --output "$RUNS/folds/summary.json" || echo "fold summary failed"
    [ "$FEATURE" != auto ] || FEATURE=$($PYTHON -m training.earth_views_folds "$RUNS/folds" --print-best) || FEATURE=auto
fi

if stage final; then
    [ "$FEATURE" != auto ] || FEATURE=efficientnet_lite0
    echo "$(date +%T) final models: embedding $FEATURE"
    declare -A NAMES=([rfm_s2]=earth-rfm [flow_r3]=earth-flow [diffusion_r3]=earth-diffusion)
    for process in rfm_s2 flow_r3 diffusion_r3; do
        train "$process" "$RUNS/${NAMES[$process]}" "$(folders --root "$DATA/train" --key "$FEATURE")" "$FEATURE" \
            "$FINAL_STEPS" "$TRAIN_VIEWS augmented views of every allowed Earth mosaic (NASA Blue Marble and others)"
    done
    wait
fi

if stage evaluate; then
    echo "$(date +%T) evaluate"
    heldout=$(folders --root "$DATA/heldout" --key "{key}")
    # The RFM model: the full table (100 views per row for NLL / localizability, 16 samples each) and the
    # normalisation check with 4,096 importance samples on 8 views. The R^3 models: their exact likelihood ODE
    # is slower, so 50 views and 4 samples per row.
    $PYTHON -m training.earth_views_eval "$RUNS/earth-rfm/model" "$heldout" --steps 32 --likelihood-images 100 \
        --record --output "$RUNS/earth-rfm/model/earth_views_eval.json" $EVAL_ARGS >"$RUNS/earth-rfm/eval.log" 2>&1 &
    for name in earth-flow earth-diffusion; do
        $PYTHON -m training.earth_views_eval "$RUNS/$name/model" "$heldout" --steps 32 --likelihood-images 50 \
            --localizability-samples 4 --normalisation-views 0 --record --output "$RUNS/$name/model/earth_views_eval.json" \
            $EVAL_ARGS >"$RUNS/$name/eval.log" 2>&1 &
    done
    wait
    echo "$(date +%T) evaluated"
    tail -n 12 "$RUNS"/earth-*/eval.log
    echo "ship with: for n in earth-rfm earth-flow earth-diffusion; do cp $RUNS/\$n/model/{config.json,model.safetensors} assets/\$n/; done"
fi
