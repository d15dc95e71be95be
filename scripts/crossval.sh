#!/usr/bin/env bash
# Cross-validate the shipped model's recipe by fold, the way models/README.md reports it.
#
# For every test fold k given: both training steps and both normalisation statistics leave
# fold k out (its synthetic and mined clips too), the step-2 checkpoint is exported to INT8,
# and fold k's real recordings are scored with `claudio-train evaluate` (INT8, float, and
# the step-1 base alone). Stages that finished are skipped and an interrupted `fit` is
# resumed, so the script can simply be started again; on a GPU several folds can share it.
#
#   scripts/crossval.sh [--work DIR] [--jobs N] FOLD...      e.g. scripts/crossval.sh 1 2 3 4
#
# Environment: BASE_EPOCHS (60), STEP2_EPOCHS (24), SEED (0), DATA (../shared/data),
# MINE_COMMIT (dca555f: the detector the shipped model's hard negatives were mined with;
# "HEAD" mines with this checkout's detector instead, which finds fewer patterns).
# A 2-core CPU needs about 65 minutes a fold; run folds in parallel only on a GPU.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/runs/crossval
JOBS=1
FOLDS=()
while [ $# -gt 0 ]; do
    case $1 in
        --work) WORK=$(realpath -m "$2"); shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        [1-9]) FOLDS+=("$1"); shift ;;
        *) echo "crossval: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#FOLDS[@]} -gt 0 ] || { echo "crossval: name the test folds, e.g. 1 2 3 4" >&2; exit 2; }

BASE_EPOCHS=${BASE_EPOCHS:-60}
STEP2_EPOCHS=${STEP2_EPOCHS:-24}
SEED=${SEED:-0}
DATA=$(realpath -m "${DATA:-$ROOT/../shared/data}")
MINE_COMMIT=${MINE_COMMIT:-dca555f}
PY=$ROOT/.venv/bin/python
T=$ROOT/.venv/bin/claudio-train
E16=$DATA/esc50-16k-folds123
E44=$DATA/esc50-fold4-dev
[ -x "$T" ] || { echo "crossval: $T missing; run scripts/setup.sh --train first" >&2; exit 1; }
for d in "$E16" "$E44"; do
    [ -f "$d/meta/esc50.csv" ] || { echo "crossval: $d/meta/esc50.csv not found (DATA=$DATA)" >&2; exit 1; }
done
mkdir -p "$WORK/runs"

say() { echo "[$(date +%H:%M:%S)] crossval: $*" >&2; }

# Shared inputs, built once: the real clips' cache, the synthetic clap clips, the mined
# hard negatives and the step-2 cache. Folds only differ in what they leave out.
if [ ! -f "$WORK/cache/esc50/.done" ]; then
    say "caching the real recordings"
    "$T" precache "$E16" "$E44" --cache "$WORK/cache/esc50"
    touch "$WORK/cache/esc50/.done"
fi
if [ ! -f "$WORK/data/synth-claps/.done" ]; then
    say "writing synthetic clap clips"
    "$T" synth-claps "$E16" "$E44" --out "$WORK/data/synth-claps" --per-fold 50 \
        --seed "$SEED" --min-clap-margin-db 12 --force
    touch "$WORK/data/synth-claps/.done"
fi
if [ ! -f "$WORK/data/mined/.done" ]; then
    mine=("$T" mine-patterns "$E16" "$E44" --out "$WORK/data/mined" --seed "$SEED"
        --replays 2 --max-per-recording 2 --force)
    if [ "$MINE_COMMIT" = HEAD ]; then
        say "mining hard negatives with this checkout's detector"
        "${mine[@]}"
    else
        src=$WORK/mine-src-$MINE_COMMIT
        if [ ! -d "$src" ]; then
            git -C "$ROOT" worktree add --detach "$src" "$MINE_COMMIT" >/dev/null 2>&1 || {
                echo "crossval: cannot check out commit $MINE_COMMIT (a shallow clone?);" \
                    "MINE_COMMIT=HEAD mines with this checkout instead" >&2
                exit 1
            }
        fi
        say "mining hard negatives with the detector of commit $MINE_COMMIT"
        # -m with the old checkout as working directory imports its packages, not ours.
        (cd "$src" && "$PY" -m training.cli "${mine[@]:1}")
    fi
    touch "$WORK/data/mined/.done"
fi
if [ ! -f "$WORK/cache/esc50-claps/.done" ]; then
    say "caching the step-2 clips"
    "$T" precache "$E16" "$E44" "$WORK/data/synth-claps" "$WORK/data/mined" \
        --cache "$WORK/cache/esc50-claps"
    touch "$WORK/cache/esc50-claps/.done"
fi

# fit OUT ARGS...: train into OUT unless it finished; continue a run that was cut short.
fit() {
    local out=$1
    shift
    [ -f "$out/.done" ] && return 0
    if [ -f "$out/last.pt" ]; then
        local args=() skip=0
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

fold() {
    local k=$1 c
    local run=$WORK/runs/fold$k
    mkdir -p "$run"
    for c in esc50 esc50-claps; do
        local d=$WORK/cache/$c-cv$k
        if [ ! -f "$d/stats.json" ]; then
            rm -rf "$d"
            cp -r "$WORK/cache/$c" "$d"
            rm -f "$d/stats.json"
            "$T" stats --cache "$d" --exclude "$k"
        fi
    done
    say "fold $k: step 1 ($BASE_EPOCHS epochs)"
    fit "$run/base" --cache "$WORK/cache/esc50-cv$k" --val-fold "$k" --model se_resnet18 \
        --epochs "$BASE_EPOCHS" --batch-size 32 --lr 0.002 --weight-decay 0.05 \
        --mixup-alpha 0.3 --patience 0 --seed "$SEED" >>"$run/base.log" 2>&1
    say "fold $k: step 2 ($STEP2_EPOCHS epochs)"
    fit "$run/claps" --cache "$WORK/cache/esc50-claps-cv$k" --val-fold "$k" \
        --init-from "$run/base/last.pt" --model se_resnet18 --epochs "$STEP2_EPOCHS" \
        --batch-size 32 --lr 0.0005 --weight-decay 0.05 --mixup-alpha 0.3 \
        --segment-prob 0.5 --patience 0 --seed "$SEED" >>"$run/claps.log" 2>&1
    if [ ! -f "$run/export/model.int8.onnx" ]; then
        say "fold $k: export"
        "$T" export "$run/claps/last.pt" --out "$run/export/model.onnx" \
            --parity-data "$WORK/cache/esc50-claps-cv$k" --int8 >"$run/export.log" 2>&1
    fi
    local test=$E16
    [ "$k" = 4 ] && test=$E44
    say "fold $k: scoring its real recordings"
    local name model
    for name in int8 float base; do
        [ -s "$run/$name.json" ] && continue
        case $name in
            int8) model=$run/export/model.int8.onnx ;;
            float) model=$run/claps/last.pt ;;
            base) model=$run/base/last.pt ;;
        esac
        "$T" evaluate "$model" "$test" --folds "$k" --json >"$run/$name.json.tmp"
        mv "$run/$name.json.tmp" "$run/$name.json"
    done
    say "fold $k: done"
}

pids=()
for k in "${FOLDS[@]}"; do
    if [ "$JOBS" -le 1 ]; then
        fold "$k"
    else
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
        fold "$k" &
        pids+=($!)
    fi
done
for p in "${pids[@]}"; do wait "$p"; done

"$PY" - "$WORK" "${FOLDS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

work, folds = Path(sys.argv[1]), sys.argv[2:]
rows, acc = [], {"base": [], "float": [], "int8": []}
for k in folds:
    m = {v: json.loads((work / "runs" / f"fold{k}" / f"{v}.json").read_text()) for v in acc}
    for v in acc:
        acc[v].append(m[v]["accuracy"])
    rows.append(
        f"| {k} | {m['int8']['n_clips']} | {m['base']['accuracy']:.3f} | "
        f"{m['float']['accuracy']:.3f} / {m['int8']['accuracy']:.3f} | "
        f"{m['float']['map']:.3f} / {m['int8']['map']:.3f} | {m['int8']['clap_vs_rest_ap']:.2f} |"
    )
mean = {v: sum(a) / len(a) for v, a in acc.items()}
table = "\n".join(
    [
        "| test fold | clips | step 1 accuracy | steps 1 + 2 accuracy float / INT8 "
        "| mAP float / INT8 | clap-vs-rest AP (INT8) |",
        "| --- | ---: | ---: | --- | --- | ---: |",
        *rows,
        f"| mean | | {mean['base']:.3f} | {mean['float']:.3f} / {mean['int8']:.3f} | | |",
    ]
)
(work / "summary.md").write_text(table + "\n")
print(table)
EOF
