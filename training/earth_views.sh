#!/usr/bin/env bash
# Rebuild the three shipped satellite-view models (assets/earth-rfm, earth-flow, earth-diffusion) and their image
# encoder (assets/earth-encoder):
#   folds:     for each held-out mosaic family (default: etopo1, then the Natural Earth pair), side by side:
#              fine-tune the encoder on the other families (training/earth_encoder.py; kept if its
#              model.safetensors exists), embed training views of those with it, train each process of
#              FOLD_PROCESSES once per denoiser size (FOLD_SIZES, dim x depth);
#   fold-eval: embed clean views of each held-out family with its fold's encoder, evaluate the fold models on
#              them, print the leave-one-mosaic-out table (a CPU does the RFM models' part in minutes);
#   encoder:   fine-tune the encoder on every allowed mosaic (FEATURE=earth_lite0_grid2; skipped for the frozen
#              ImageNet features efficientnet_lite0 / efficientnet_lite0_grid2);
#   data:      gather the mosaics, render + embed the training views of every mosaic;
#   final:     train the three processes on all mosaics with that feature;
#   evaluate:  embed clean held-out views of every mosaic, evaluate the three models on them and record the
#              table in each model's config.json.
#
#   STAGES="folds fold-eval" bash training/earth_views.sh                 # the leave-one-mosaic-out table
#   STAGES="encoder data final evaluate" bash training/earth_views.sh    # the shipped models
#
# ENCODER_SECONDS caps each encoder fine-tuning in wall time (default: no cap, the recipe's 600 steps; a capped run's
# cosine schedule ends at the cap), TRAIN_SECONDS each denoiser
# training: a run still going then is stopped and its last checkpoint (every 1000 steps) is exported instead.
# Every step is resumable: finished shards are skipped, training.train resumes from <run>/last.pt and
# training.earth_encoder from <encoder>/last.pt.
set -euo pipefail
MOSAICS=${MOSAICS:-data/mosaics}
DATA=${DATA:-data/earth}
RUNS=${RUNS:-runs}
TRAIN_VIEWS=${TRAIN_VIEWS:-140000}       # in all, split over the mosaics by their manifest weights
FOLD_VIEWS=${FOLD_VIEWS:-70000}          # a fold's training views
HELDOUT_VIEWS=${HELDOUT_VIEWS:-2000}     # per mosaic: clean 256 px renderings, split seed 1
FOLD_FAMILIES=${FOLD_FAMILIES:-etopo1,natural-earth}
FOLD_SIZES=${FOLD_SIZES:-128x4}          # denoiser dim x depth of the fold models
FOLD_PROCESSES=${FOLD_PROCESSES:-rfm_s2,flow_r3,diffusion_r3}   # the fold models' processes (the shipped three)
FOLD_KEY=earth_lite0_grid2               # the folds fine-tune their own encoder
FOLD_STEPS=${FOLD_STEPS:-3000}
FINAL_STEPS=${FINAL_STEPS:-6000}
FEATURE=${FEATURE:-earth_lite0_grid2}    # the final models' embedding key
STAGES=${STAGES:-folds fold-eval encoder data final evaluate}
ENCODER_SECONDS=${ENCODER_SECONDS:-100000}
ENCODER_ARGS=${ENCODER_ARGS:-}
TRAIN_SECONDS=${TRAIN_SECONDS:-100000}
PYTHON=${PYTHON:-python}
TRAIN_ARGS=${TRAIN_ARGS:-}   # extra training flags, e.g. for a smoke test: "--dim 16 --depth 1 --batch-size 16"
EVAL_ARGS=${EVAL_ARGS:-}
CONFIG=training/configs/earth_views.yaml
ENCODER_RUN=$RUNS/earth-encoder

stage() { [[ " $STAGES " == *" $1 "* ]]; }
folders() { $PYTHON -m training.earth_views_data folders --mosaics-dir "$MOSAICS" "$@"; }

# train PROCESS OUT SHARDS KEY STEPS DESCRIPTION [training flags] (in the background; export the last checkpoint
# if stopped)
train() {
    mkdir -p "$2"
    local args=(--config "$CONFIG" --process "$1" --train-shards "$3" --embedding-key "$4" --encoder "$4"
                --train-data "$6" --output-dir "$2" "${@:7}")
    (timeout --signal=INT "$TRAIN_SECONDS" $PYTHON -m training.train "${args[@]}" --total-steps "$5" $TRAIN_ARGS \
        >"$2/train.log" 2>&1 || true
     if [ ! -f "$2/model/model.safetensors" ]; then
        step=$($PYTHON -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=False)['position']['step'])" "$2/last.pt")
        echo "$2: stopped at step $step; exporting that checkpoint" | tee -a "$2/train.log"
        $PYTHON -m training.train "${args[@]}" --total-steps "$step" $TRAIN_ARGS >>"$2/train.log" 2>&1
     fi
     tail -n 1 "$2/metrics.csv") &
}

# shards OUT SEED VIEWS KEY WEIGHTS [extra flags]: render + embed views into OUT/<mosaic>/<KEY> (WEIGHTS: the
# fine-tuned encoder's file for earth_lite0_grid2, "-" for the frozen features)
shards() {
    local weights=()
    [ "$5" = - ] || weights=(--encoder-weights "$5")
    $PYTHON -m training.earth_views_data shards --mosaics-dir "$MOSAICS" --out "$1" --split-seed "$2" --num-views "$3" \
        --keys "$4" "${weights[@]}" "${@:6}"
}
frozen() { [[ "$FEATURE" == efficientnet_lite0* ]]; }
# fold_run FAMILY SIZE PROCESS: a fold model's run folder (<family>__<key>-<size>, then __<process> but for RFM)
fold_run() {
    local run="$RUNS/folds/${1}__$FOLD_KEY-$2"
    [ "$3" = rfm_s2 ] || run="${run}__$3"
    echo "$run"
}
FEATURE_WEIGHTS=-                        # the final encoder's file, "-" for the frozen features
frozen || FEATURE_WEIGHTS=$ENCODER_RUN/model.safetensors

[ -f "$MOSAICS/mosaics.json" ] || $PYTHON -m training.earth_views_mosaics --out "$MOSAICS"

if stage folds; then
    echo "$(date +%T) folds"
    for family in ${FOLD_FAMILIES//,/ }; do
        (
        fold=$RUNS/folds/$family
        mkdir -p "$fold"
        [ -f "$fold/encoder/model.safetensors" ] ||
            $PYTHON -m training.earth_encoder --mosaics-dir "$MOSAICS" --exclude-family "$family" --out "$fold/encoder" \
                --seconds "$ENCODER_SECONDS" $ENCODER_ARGS >"$fold.encoder.log" 2>&1
        others=$(folders --root "$DATA" --exclude-family "$family" --names | paste -sd,)
        shards "$DATA/folds/$family/train" 0 "$FOLD_VIEWS" $FOLD_KEY "$fold/encoder/model.safetensors" --mosaics "$others" \
            --batch-size 1024 >"$fold.data.log" 2>&1
        train_folders=$(folders --root "$DATA/folds/$family/train" --key $FOLD_KEY --exclude-family "$family")
        for size in ${FOLD_SIZES//,/ }; do
            for process in ${FOLD_PROCESSES//,/ }; do
                train "$process" "$(fold_run "$family" "$size" "$process")" "$train_folders" $FOLD_KEY "$FOLD_STEPS" \
                    "$FOLD_VIEWS augmented views of the allowed Earth mosaics except the $family family" \
                    --dim "${size%x*}" --depth "${size#*x}"
            done
        done
        wait
        ) &
    done
    wait
fi

if stage fold-eval; then
    echo "$(date +%T) fold evaluation"
    for family in ${FOLD_FAMILIES//,/ }; do
        mine=$(folders --root "$DATA" --only-family "$family" --names | paste -sd,)
        shards "$DATA/folds/$family/heldout" 1 "$HELDOUT_VIEWS" $FOLD_KEY "$RUNS/folds/$family/encoder/model.safetensors" \
            --mosaics "$mine" --per-mosaic --no-augment --size 256 --shard-size 1000 --batch-size 250 \
            >"$RUNS/folds/$family.heldout.log" 2>&1
        for size in ${FOLD_SIZES//,/ }; do
            for process in ${FOLD_PROCESSES//,/ }; do
                out=$(fold_run "$family" "$size" "$process")
                samples=16   # localizability samples per view; the R^3 likelihood is a radial integral per point
                [ "$process" = rfm_s2 ] || samples=4
                for mosaic in ${mine//,/ }; do
                    $PYTHON -m training.earth_views_eval "$out/model" "$DATA/folds/$family/heldout/$mosaic/{key}" \
                        --steps 32 --likelihood-images 50 --localizability-samples $samples --normalisation-views 0 \
                        --no-prior --output "$out/eval-$mosaic.json" $EVAL_ARGS >"$out/eval-$mosaic.log" 2>&1 &
                done
            done
            wait
        done
    done
    $PYTHON -m training.earth_views_folds "$RUNS/folds" --output "$RUNS/folds/summary.json"
fi

if stage encoder && ! frozen; then
    echo "$(date +%T) encoder"
    mkdir -p "$RUNS"
    $PYTHON -m training.earth_encoder --mosaics-dir "$MOSAICS" --out "$ENCODER_RUN" --seconds "$ENCODER_SECONDS" \
        $ENCODER_ARGS >"$ENCODER_RUN.log" 2>&1
fi

if stage data; then
    echo "$(date +%T) data"
    shards "$DATA/train" 0 "$TRAIN_VIEWS" "$FEATURE" "$FEATURE_WEIGHTS" --batch-size 1024
fi

if stage final; then
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
    shards "$DATA/heldout" 1 "$HELDOUT_VIEWS" "$FEATURE" "$FEATURE_WEIGHTS" --per-mosaic --no-augment --size 256 \
        --shard-size 1000 --batch-size 250
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
    frozen || echo "      and: cp $ENCODER_RUN/model.safetensors assets/earth-encoder/"
fi
