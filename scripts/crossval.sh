#!/usr/bin/env bash
# Cross-validate the shipped model's recipe by fold, the way models/README.md reports it.
#
# For every test fold k given, scripts/recipe.sh trains both steps with fold k left out
# (of both normalisation statistics too, with its synthetic and mined clips) and exports
# INT8; fold k's real recordings are then scored with `claudio-train evaluate` (INT8, float,
# and the step-1 base alone) and a table of all folds is written to WORK/summary.md.
# Finished stages are skipped and a cut-short `fit` resumes: start it again to continue.
#
#   scripts/crossval.sh [--work DIR] [--jobs N] [--train-only | --score-cache] FOLD...
#       e.g. scripts/crossval.sh 1 2 3 4
#
# --train-only stops after the export: where the recordings are not at hand (a GPU that got
# the caches from `claudio-train pack-cache`, see scripts/gpu_lease.sh), score them later.
# --score-cache scores the fold's real clips from the log-mel cache instead of the
# recordings (the same clips; from a packed cache, within its 0.31 dB steps), so a machine
# without the recordings can still measure float and INT8 accuracy.
# With VARIANT set (scripts/recipe.sh), step 2 and the scores are the variant's
# (runs/foldK/int8-VARIANT.json ..., WORK/summary-VARIANT.md); the base is shared. Scores
# from the cache end in -cache (int8-cache.json, summary-cache.md).
#
# Environment: see scripts/recipe.sh (epochs, seed, data folder, mining commit).
# A 2-core CPU needs about 2.5 hours a fold with native bf16 (about 4.5 in float32 on one
# without, by its step times); run folds side by side only on a GPU.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/runs/crossval
JOBS=1
SCORE=1
FROM_CACHE=0
FOLDS=()
while [ $# -gt 0 ]; do
    case $1 in
        --work) WORK=$(realpath -m "$2"); shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --train-only) SCORE=0; shift ;;
        --score-cache) FROM_CACHE=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        [1-9]) FOLDS+=("$1"); shift ;;
        *) echo "crossval: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#FOLDS[@]} -gt 0 ] || { echo "crossval: name the test folds, e.g. 1 2 3 4" >&2; exit 2; }
# Scores from the cache are named apart from scores of the recordings (same clips, 8-bit).
FROM=""
[ $FROM_CACHE = 1 ] && FROM="-cache"

# shellcheck source=scripts/recipe.sh
. "$ROOT/scripts/recipe.sh"
recipe_check
recipe_inputs

fold() {
    local k=$1 name model
    local run=$WORK/runs/fold$k
    recipe_train "fold$k" "$k"
    [ $SCORE = 1 ] || { say "fold$k: trained (--train-only: not scored)"; return 0; }
    local test=$E16 where="recordings" file
    [ "$k" = 4 ] && test=$E44
    [ $FROM_CACHE = 1 ] && test=$WORK/cache/esc50 where="clips from the cache"
    say "fold$k: scoring its real $where"
    for name in int8 float base; do
        file=$run/$name${VARIANT:+-$VARIANT}$FROM.json
        [ "$name" = base ] && file=$run/base$FROM.json
        [ -s "$file" ] && continue
        case $name in
            int8) model=$run/$EXPORT_DIR/model.int8.onnx ;;
            float) model=$run/$STEP2_DIR/last.pt ;;
            base) model=$run/base/last.pt ;;
        esac
        "$T" evaluate "$model" "$test" --folds "$k" --json >"$file.tmp"
        mv "$file.tmp" "$file"
    done
    say "fold$k: done"
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
[ $SCORE = 1 ] || exit 0

"$PY" - "$WORK" "$VARIANT" "$FROM" "${FOLDS[@]}" <<'PYEOF'
import json
import sys
from pathlib import Path

work, variant, source, folds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
suffix = f"-{variant}" if variant else ""
rows, acc = [], {"base": [], "float": [], "int8": []}
for k in folds:
    run = work / "runs" / f"fold{k}"
    name = {v: f"{v}{'' if v == 'base' else suffix}{source}.json" for v in acc}
    m = {v: json.loads((run / name[v]).read_text()) for v in acc}
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
(work / f"summary{suffix}{source}.md").write_text(table + "\n")
print(table)
PYEOF
