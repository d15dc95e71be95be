#!/usr/bin/env bash
# Train the shipped model from scratch with one command: scripts/recipe.sh on all four
# folds (nothing held out), exported to INT8 with its labels, front end and normalisation
# in the ONNX metadata, which is all the daemon needs.
#
#   scripts/train_model.sh [--work DIR] [--out FILE]
#
# --out receives the INT8 model (default WORK/claudio-esc50-se_resnet18.onnx);
# `--out models/claudio-esc50-se_resnet18.onnx` replaces the shipped one. Finished stages
# are skipped and a cut-short `fit` resumes: start it again to continue. About three and a
# half hours on a 2-core CPU with native bf16 (about five and a half in float32 on one
# without), ten minutes on a GPU. Environment: see scripts/recipe.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/runs/model
OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --work) WORK=$(realpath -m "$2"); shift 2 ;;
        --out) OUT=$(realpath -m "$2"); shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "train_model: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-$WORK/claudio-esc50-se_resnet18.onnx}

# shellcheck source=scripts/recipe.sh
. "$ROOT/scripts/recipe.sh"
recipe_check
recipe_inputs
recipe_train all
mkdir -p "$(dirname "$OUT")"
cp "$WORK/runs/all/$EXPORT_DIR/model.int8.onnx" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
say "wrote $OUT ($(($(stat -c %s "$OUT") / 1000000)) MB)"
