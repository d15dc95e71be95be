# The shipped model's training recipe (models/README.md), sourced by scripts/train_model.sh
# and scripts/crossval.sh so that the model and its cross-validation cannot drift apart.
# The caller sets ROOT and WORK. Every stage leaves a marker when it finishes and is skipped
# next time; a `fit` that was cut short is resumed, so a run can simply be started again.
#
# Environment: BASE_EPOCHS (200; 60 for the recipe shipped before, models/README.md),
# STEP2_EPOCHS (24), SEED (0), DATA (../shared/data), SYNTH_PER_FOLD (50 synthetic clap
# clips a fold; the tests' few recordings need only a handful),
# MINE_COMMIT (dca555f: the detector the shipped model's hard negatives were mined with;
# "HEAD" mines with this checkout's detector instead, which finds fewer patterns a replay),
# MINE_REPLAYS (2: replays of each recording over a background when mining; with HEAD, 4
# mine about as many clips as dca555f's 2; tried on folds 2-4 and not adopted:
# models/README.md, "Hard negatives mined with today's detector"; a WORK that has mined
# once keeps its clips, so change these with a fresh WORK), PYTHON
# (.venv/bin/python: any interpreter that imports the training package and its extra),
# FIT_ARGS (more `fit` options for both steps, e.g. `--no-channels-last` to repeat the
# runs made before channels-last training bit for bit), BASE_ARGS and STEP2_ARGS (the same
# for one step; they come last, so `STEP2_ARGS="--lr 0.0002"` replaces the recipe's own
# value: variants to try on held-out folds, not the shipped recipe), VARIANT (a name: step 2
# and the export go to runs/NAME/claps-VARIANT and export-VARIANT, on the same base, so
# step-2 variants can be compared without training the base again), CLAP_CHECK (min_clap_evidence=1.25:
# the clap check's operating point written into the exported models' metadata, chosen for
# this recipe's models with bench/verifier_sweep.py on held-out folds; models/README.md,
# "In the daemon: the clap benchmark"; several KEY=VALUE separated by spaces).
# Where both caches are already built, or unpacked from `claudio-train pack-cache`
# (scripts/gpu_lease.sh), no recordings are needed.

BASE_EPOCHS=${BASE_EPOCHS:-200}
STEP2_EPOCHS=${STEP2_EPOCHS:-24}
VARIANT=${VARIANT:-}
[[ $VARIANT =~ ^[A-Za-z0-9._-]*$ ]] || { echo "VARIANT: letters, digits, '.', '_', '-' only" >&2; exit 2; }
if [ -n "$VARIANT" ] && [ -n "${BASE_ARGS:-}" ]; then
    # The base is shared by every variant (runs/NAME/base): a variant cannot change it.
    echo "VARIANT varies step 2 only; BASE_ARGS needs a WORK of its own" >&2
    exit 2
fi
STEP2_DIR=claps${VARIANT:+-$VARIANT}
EXPORT_DIR=export${VARIANT:+-$VARIANT}
SEED=${SEED:-0}
DATA=$(realpath -m "${DATA:-$ROOT/../shared/data}")
MINE_COMMIT=${MINE_COMMIT:-dca555f}
MINE_REPLAYS=${MINE_REPLAYS:-2}
SYNTH_PER_FOLD=${SYNTH_PER_FOLD:-50}
PY=${PYTHON:-$ROOT/.venv/bin/python}
read -r -a FIT_EXTRA <<<"${FIT_ARGS:-}"
read -r -a BASE_EXTRA <<<"${BASE_ARGS:-}"
read -r -a STEP2_EXTRA <<<"${STEP2_ARGS:-}"
read -r -a CLAP_CHECK_ARGS <<<"${CLAP_CHECK-min_clap_evidence=1.25}"
T=claudio_train
claudio_train() { "$PY" -m training.cli "$@"; }
E16=$DATA/esc50-16k-folds123
E44=$DATA/esc50-fold4-dev

say() { echo "[$(date +%H:%M:%S)] $(basename "$0" .sh): $*" >&2; }
die() { echo "$(basename "$0" .sh): $*" >&2; exit "${2:-1}"; }

recipe_check() {
    "$PY" -c "import torch, training.cli" 2>/dev/null ||
        die "$PY cannot import the training package; run scripts/setup.sh --train first"
    mkdir -p "$WORK/runs"
    recipe_cached && return 0
    local d
    for d in "$E16" "$E44"; do
        [ -f "$d/meta/esc50.csv" ] || die "$d/meta/esc50.csv not found (DATA=$DATA)"
    done
}

recipe_cached() { [ -f "$WORK/cache/esc50/.done" ] && [ -f "$WORK/cache/esc50-claps/.done" ]; }

# The inputs every split shares, built once: the real clips' cache, the synthetic clap
# clips, the mined hard negatives and the step-2 cache. Splits differ only in what they
# leave out.
recipe_inputs() {
    recipe_cached && return 0
    if [ ! -f "$WORK/cache/esc50/.done" ]; then
        say "caching the real recordings"
        "$T" precache "$E16" "$E44" --cache "$WORK/cache/esc50"
        touch "$WORK/cache/esc50/.done"
    fi
    if [ ! -f "$WORK/data/synth-claps/.done" ]; then
        say "writing synthetic clap clips"
        "$T" synth-claps "$E16" "$E44" --out "$WORK/data/synth-claps" --per-fold "$SYNTH_PER_FOLD" \
            --seed "$SEED" --min-clap-margin-db 12 --force
        touch "$WORK/data/synth-claps/.done"
    fi
    if [ ! -f "$WORK/data/mined/.done" ]; then
        local mine=(mine-patterns "$E16" "$E44" --out "$WORK/data/mined" --seed "$SEED"
            --replays "$MINE_REPLAYS" --max-per-recording 2 --force)
        if [ "$MINE_COMMIT" = HEAD ]; then
            say "mining hard negatives with this checkout's detector"
            "$T" "${mine[@]}"
        else
            local src=$WORK/mine-src-$MINE_COMMIT
            if [ ! -d "$src" ]; then
                git -C "$ROOT" worktree add --detach "$src" "$MINE_COMMIT" >/dev/null 2>&1 ||
                    die "cannot check out commit $MINE_COMMIT (a shallow clone?); MINE_COMMIT=HEAD mines with this checkout instead"
            fi
            say "mining hard negatives with the detector of commit $MINE_COMMIT"
            # -m with the old checkout as working directory imports its packages, not ours.
            (cd "$src" && "$PY" -m training.cli "${mine[@]}")
        fi
        touch "$WORK/data/mined/.done"
    fi
    if [ ! -f "$WORK/cache/esc50-claps/.done" ]; then
        say "caching the step-2 clips"
        "$T" precache "$E16" "$E44" "$WORK/data/synth-claps" "$WORK/data/mined" \
            --cache "$WORK/cache/esc50-claps"
        touch "$WORK/cache/esc50-claps/.done"
    fi
}

# recipe_fit OUT ARGS...: train into OUT unless it finished; continue a run cut short.
recipe_fit() {
    local out=$1
    shift
    [ -f "$out/.done" ] && return 0
    if [ -f "$out/last.pt" ]; then
        local args=() skip=0 a
        for a in "$@"; do # --resume and --init-from exclude each other
            if [ $skip = 1 ]; then skip=0; continue; fi
            if [ "$a" = --init-from ]; then skip=1; continue; fi
            args+=("$a")
        done
        "$T" fit --out "$out" --resume "${args[@]}"
    else
        "$T" fit --out "$out" "$@"
    fi
    touch "$out/.done"
}

# recipe_train NAME [FOLD]: both steps and the INT8 export into $WORK/runs/NAME, with FOLD
# (its real, synthetic and mined clips) left out of the statistics and the training.
recipe_train() {
    local name=$1 fold=${2:-}
    local run=$WORK/runs/$name c d
    local split=(--patience 0 --seed "$SEED")
    local stats=()
    if [ -n "$fold" ]; then
        split+=(--val-fold "$fold")
        stats=(--exclude "$fold")
    fi
    mkdir -p "$run"
    for c in esc50 esc50-claps; do
        d=$WORK/cache/$c-$name
        if [ ! -f "$d/stats.json" ]; then
            rm -rf "$d"
            cp -r "$WORK/cache/$c" "$d"
            rm -f "$d/stats.json"
            "$T" stats --cache "$d" "${stats[@]}"
        fi
    done
    say "$name: step 1, the base model ($BASE_EPOCHS epochs; log: $run/base.log)"
    recipe_fit "$run/base" --cache "$WORK/cache/esc50-$name" --model se_resnet18 \
        --epochs "$BASE_EPOCHS" --batch-size 32 --lr 0.002 --weight-decay 0.05 \
        --mixup-alpha 0.3 "${split[@]}" "${FIT_EXTRA[@]}" "${BASE_EXTRA[@]}" \
        >>"$run/base.log" 2>&1
    say "$name: step 2, the clap check's view ($STEP2_EPOCHS epochs; log: $run/$STEP2_DIR.log)"
    recipe_fit "$run/$STEP2_DIR" --cache "$WORK/cache/esc50-claps-$name" \
        --init-from "$run/base/last.pt" --model se_resnet18 --epochs "$STEP2_EPOCHS" \
        --batch-size 32 --lr 0.0005 --weight-decay 0.05 --mixup-alpha 0.3 \
        --segment-prob 0.5 "${split[@]}" "${FIT_EXTRA[@]}" "${STEP2_EXTRA[@]}" \
        >>"$run/$STEP2_DIR.log" 2>&1
    if [ ! -f "$run/$EXPORT_DIR/model.int8.onnx" ]; then
        say "$name: export (INT8)"
        local check=() c
        for c in "${CLAP_CHECK_ARGS[@]}"; do check+=(--clap-check "$c"); done
        "$T" export "$run/$STEP2_DIR/last.pt" --out "$run/$EXPORT_DIR/model.onnx" \
            --parity-data "$WORK/cache/esc50-claps-$name" --int8 "${check[@]}" \
            >"$run/$EXPORT_DIR.log" 2>&1
    fi
}
