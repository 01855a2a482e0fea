#!/usr/bin/env bash
# The GPU recipe (config/fer2013_gpu.toml) in one call of the device tool: trained with
# KERAS_BACKEND=jax on FER2013's full train/ split, evaluated on val/ (PublicTest), the model
# and the figures back under $OUT. The device machine has JAX, OpenCV, Pillow, pandas,
# matplotlib and scikit-learn but no TensorFlow and no Keras, and ../shared does not travel there.
#
#   bash tools/device_checks.sh prepare    # here: Keras' wheels into .whl/ (about 2 MB), FER2013's
#                                          # train/ and val/ JPEGs as one .tar.xz into .device_data/
#                                          # (about 47 MB; both git-ignored)
#   device tool: run, command "bash tools/device_checks.sh device", carry [".whl", ".device_data"],
#                timeout_s 570
#
# On the device: tools/gpu_recipe.py runs the recipe's stages (get_data to model_evaluation_4) on
# the unpacked faces, stopped by SIGINT (a consistent checkpoint, best.keras kept) if it would
# outrun the call. $OUT gets gpu.txt, gpu_recipe.log, results.tar.gz (model_info.json,
# training_summary.json, metrics.csv, history.png, evaluation.json, confusion_matrix.png) and the
# best model in parts of at most 15 MiB (the device tool returns files of up to 16 MiB):
# join them with `cat best.keras.part* > best.keras`. DEVICE_CHECKS_QUICK=1 runs
# tools/gpu_recipe.py --quick instead (the shipped sample, 2 training steps), without installing
# the wheels or unpacking the faces: it checks the script on a CPU
# (PATH=.venv/bin:$PATH KERAS_BACKEND=jax DEVICE_CHECKS_QUICK=1 bash tools/device_checks.sh device).
set -euo pipefail
cd "$(dirname "$0")/.."

KERAS_WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0)
CALL_SECONDS=540         # the call's timeout_s (570) less the time to pack and return the results
TRAVEL_LIMIT=67108864    # 64 MiB: the working tree and the carried folders together
RUN_NAME=fer2013_vgg_gpu

case "${1:-}" in
prepare)
    exclude_file="$(git rev-parse --git-common-dir)/info/exclude"  # also right in a worktree
    mkdir -p "$(dirname "$exclude_file")"
    for ignored in /.whl/ /.device_data/; do
        grep -qxF "$ignored" "$exclude_file" 2>/dev/null || echo "$ignored" >> "$exclude_file"
    done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${KERAS_WHEELS[@]}"
    source_root=${EMOTION_FER_ROOT:-../shared/datasets/fer2013}
    rm -rf .device_data
    mkdir -p .device_data
    # The JPEG files as they are (decoded pixels compress worse); xz also shares their headers.
    tar -C "$source_root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=2020-01-01 \
        -cJf .device_data/fer2013.tar.xz train val
    tree_bytes=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1)
    carried_bytes=$(du -cb .whl .device_data | tail -n 1 | cut -f1)
    echo "prepared: $(ls .whl | wc -l) wheels, $(du -sh .whl .device_data | cut -f1 | paste -sd' ');" \
        "$((tree_bytes + carried_bytes)) of the ${TRAVEL_LIMIT} bytes that may travel"
    if [ $((tree_bytes + carried_bytes)) -gt "$TRAVEL_LIMIT" ]; then
        echo "too large to travel: ignore or remove untracked files" >&2
        exit 1
    fi
    ;;
device)
    OUT=${OUT:-reports/device}
    mkdir -p "$OUT"
    work=${TMPDIR:-/tmp}/gpu_recipe
    rm -rf "$work"
    mkdir -p "$work"
    if [ "${DEVICE_CHECKS_QUICK:-0}" = 1 ]; then
        recipe=(--quick)  # here, with the python3 of an environment that has Keras and JAX
    else
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl
        export PYTHONPATH=/tmp/site
        tar -xJf .device_data/fer2013.tar.xz -C "$work"
        mkdir -p "$work/fer2013" && mv "$work/train" "$work/val" "$work/fer2013/"
        recipe=(--source "$work/fer2013")
    fi
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/gpu.txt" 2>&1
    python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
        >> "$OUT/gpu.txt" 2>&1
    status=0
    # SIGINT stops training at a consistent checkpoint (best.keras kept) if the recipe runs long.
    timeout -s INT $((CALL_SECONDS - SECONDS)) python3 tools/gpu_recipe.py "${recipe[@]}" --work "$work/run" \
        --output "$work/output" > "$OUT/gpu_recipe.log" 2>&1 || status=$?
    echo "recipe exit status $status after $SECONDS s" >> "$OUT/gpu_recipe.log"
    run_dir="$work/run/models/$RUN_NAME"
    mkdir -p "$work/output"
    # The run folder's files too, when training was stopped before the output was copied.
    for name in model_info.json training_summary.json metrics.csv history.png best.keras; do
        [ -f "$work/output/$name" ] || [ ! -f "$run_dir/$name" ] || cp "$run_dir/$name" "$work/output/"
    done
    [ ! -f "$run_dir/checkpoint/state.json" ] || cp "$run_dir/checkpoint/state.json" "$work/output/"
    if [ -f "$work/output/best.keras" ]; then
        split -b 15m -d "$work/output/best.keras" "$OUT/best.keras.part"
        rm "$work/output/best.keras"
    fi
    tar -C "$work/output" -czf "$OUT/results.tar.gz" .
    cat "$OUT/gpu.txt"
    tail -n 30 "$OUT/gpu_recipe.log"
    ls -l "$OUT"
    exit "$status"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 2
    ;;
esac
