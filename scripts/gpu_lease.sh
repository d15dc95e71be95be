#!/usr/bin/env bash
# The recipe (scripts/recipe.sh) on a lent GPU that takes 64 MiB a call and cannot reach the
# network, as in Claudio's development setup (the `device` tool): everything it needs travels
# in one git-ignored folder, the caches packed a byte a value (`claudio-train pack-cache`,
# about 46 MB for ESC-50's two) and the wheels its image lacks (soundfile and cffi).
#
#   scripts/gpu_lease.sh prepare [--work DIR] [--lease DIR] [--no-wheels]
#       here: build the recipe's inputs (as train_model.sh does), pack them into
#       LEASE/esc50.pack and fetch the wheels into LEASE/whl (default LEASE: .lease)
#   scripts/gpu_lease.sh train [--work DIR] [--lease DIR] [--out DIR] [--scores-only]
#                              [TARGET...]
#       there, in the repository root: unpack, then train every TARGET side by side (a
#       test fold 1-4, trained without it as scripts/crossval.sh does, or "all", the
#       shipped model's run; default: 1 2 3 4 all) and copy each INT8 model to
#       OUT/TARGET.int8.onnx (default OUT: $OUT; fold1-VARIANT.int8.onnx with VARIANT set)
#       with the logs in OUT/logs.tar.gz. Each test fold's real clips are scored there
#       from the cache (base, float and INT8: `crossval.sh --score-cache`), the table in
#       OUT/crossval.md (crossval-VARIANT.md). --scores-only copies no fold model (a call
#       returns at most 8 files, 64 MiB: step-2 variants of four folds are scores only).
#
# A call:  run(command="scripts/gpu_lease.sh train", carry=[".lease"], timeout_s=590)
# (on one H100 the five targets of the shipped recipe took 554 s side by side). A step-2
# variant on the bases a first call trained, on the same warm machine:
#   run(command="VARIANT=lr2e-4 STEP2_ARGS='--lr 0.0002' scripts/gpu_lease.sh train
#                --scores-only 1 2 3 4", carry=[".lease"])
# Score the returned models on the recordings here with `claudio-train evaluate MODEL DATA
# --folds K --json` (the cache's scores are within its 8-bit steps of these).
# Environment as for scripts/recipe.sh; PYTHON defaults to python3 for `train`. A `train`
# cut short resumes on the same machine (WORK defaults to runs/lease, kept between calls).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
[ $# -gt 0 ] && shift
LEASE=$ROOT/.lease
WORK=
DEST=${OUT:-}
WHEELS=1
SCORES_ONLY=0
TARGETS=()
while [ $# -gt 0 ]; do
    case $1 in
        --work) WORK=$(realpath -m "$2"); shift 2 ;;
        --lease) LEASE=$(realpath -m "$2"); shift 2 ;;
        --out) DEST=$(realpath -m "$2"); shift 2 ;;
        --no-wheels) WHEELS=0; shift ;;
        --scores-only) SCORES_ONLY=1; shift ;;
        [1-9] | all) TARGETS+=("$1"); shift ;;
        *) echo "gpu_lease: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

case $cmd in
    prepare)
        WORK=${WORK:-$ROOT/runs/model}
        . "$ROOT/scripts/recipe.sh"
        recipe_check
        recipe_inputs
        mkdir -p "$LEASE"
        say "packing the caches into $LEASE/esc50.pack"
        "$T" pack-cache "$WORK/cache/esc50" "$WORK/cache/esc50-claps" --out "$LEASE/esc50.pack"
        if [ $WHEELS = 1 ]; then
            rm -rf "$LEASE/whl"
            # Versions as in this environment; manylinux wheels for the image's Python 3.12.
            pins=$("$PY" -c 'import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in ("soundfile", "cffi", "pycparser")))')
            say "fetching wheels: $pins"
            # shellcheck disable=SC2086
            "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
                --implementation cp --platform manylinux_2_28_x86_64 \
                --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                -d "$LEASE/whl" $pins
        fi
        say "ready: $(du -sh "$LEASE" | cut -f1) in $LEASE"
        ;;
    train)
        WORK=${WORK:-$ROOT/runs/lease}
        [ -n "$DEST" ] || { echo "gpu_lease: --out DIR or \$OUT needed" >&2; exit 2; }
        [ ${#TARGETS[@]} -gt 0 ] || TARGETS=(1 2 3 4 all)
        export PYTHON=${PYTHON:-python3}
        if compgen -G "$LEASE/whl/*.whl" >/dev/null; then
            "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade \
                --target /tmp/claudio-site "$LEASE"/whl/*.whl
            export PYTHONPATH=/tmp/claudio-site${PYTHONPATH:+:$PYTHONPATH}
        fi
        # The checkout itself, not installed: the device's image holds the dependencies.
        export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
        . "$ROOT/scripts/recipe.sh"
        if ! recipe_cached; then
            [ -f "$LEASE/esc50.pack" ] || die "$LEASE/esc50.pack missing; run 'prepare' first"
            "$T" unpack-cache "$LEASE/esc50.pack" --into "$WORK/cache" --force
            touch "$WORK/cache/esc50/.done" "$WORK/cache/esc50-claps/.done"
        fi
        mkdir -p "$DEST" "$WORK/logs"
        # Each target's model is copied out as soon as it is exported, so a call that runs
        # past its time limit still returns the targets that finished.
        train_target() {
            local t=$1
            if [ "$t" = all ]; then
                "$ROOT/scripts/train_model.sh" --work "$WORK" \
                    --out "$DEST/all${VARIANT:+-$VARIANT}.int8.onnx"
            else
                "$ROOT/scripts/crossval.sh" --work "$WORK" --score-cache "$t" || return 1
                [ $SCORES_ONLY = 1 ] ||
                    cp "$WORK/runs/fold$t/$EXPORT_DIR/model.int8.onnx" \
                        "$DEST/fold$t${VARIANT:+-$VARIANT}.int8.onnx"
            fi
        }
        pids=()
        for t in "${TARGETS[@]}"; do
            train_target "$t" >"$WORK/logs/$t.out" 2>&1 &
            pids+=($!)
        done
        failed=0
        for i in "${!pids[@]}"; do
            if wait "${pids[$i]}"; then
                say "${TARGETS[$i]} done"
            else
                failed=1
                say "${TARGETS[$i]} failed (see logs)"
            fi
        done
        folds=()
        for t in "${TARGETS[@]}"; do [ "$t" = all ] || folds+=("$t"); done
        if [ ${#folds[@]} -gt 0 ] && [ $failed = 0 ]; then
            # Every fold is scored by now: this only writes the table.
            "$ROOT/scripts/crossval.sh" --work "$WORK" --score-cache "${folds[@]}" \
                >"$DEST/crossval${VARIANT:+-$VARIANT}.md" 2>>"$WORK/logs/summary.out" ||
                failed=1
        fi
        (cd "$WORK" && tar czf "$DEST/logs.tar.gz" logs runs/*/*.log runs/*/*.json \
            2>/dev/null) || true
        say "done: $(cd "$DEST" && ls | tr "\n" " ")"
        exit $failed
        ;;
    -h | --help | "")
        sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'
        [ -n "$cmd" ] || exit 2
        ;;
    *) echo "gpu_lease: unknown command '$cmd' (prepare or train; see --help)" >&2; exit 2 ;;
esac
