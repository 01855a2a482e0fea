#!/usr/bin/env bash
# The GPU figures of issue 4 in one call of the device tool, prepared here so that the lent
# minutes go to measuring. The device machine (nvidia-h200) has JAX, OpenCV, Pillow and pandas
# but no TensorFlow and no Keras, and ../shared does not travel there.
#
#   bash tools/device_checks.sh prepare    # here: Keras' wheels into .whl/, 2,100 FER2013 faces
#                                          # into .device_data/ (both git-ignored, about 10 MB)
#   device tool: run, command "bash tools/device_checks.sh device", carry [".whl", ".device_data"],
#                timeout_s 570
#
# On the device: bench/training.py --gpu-only (training fed from JPEG files by ImageBatches,
# from decoded arrays, and by one repeated batch; mixed precision off and on), then the same
# with --resize-in-model, then, in the time left, the 48-pixel configuration with 8 training
# steps per compiled call; logs and JSON reports come back under $OUT. DEVICE_CHECKS_QUICK=1
# runs the same steps with --quick instead of --gpu-only, without installing the wheels (checks
# the script on a CPU: PATH=.venv/bin:$PATH DEVICE_CHECKS_QUICK=1 bash tools/device_checks.sh device).
set -euo pipefail
cd "$(dirname "$0")/.."

KERAS_WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0)
FER_PER_CLASS=300  # bench/training.py reads 2,048 faces spread over the 7 classes on a GPU

case "${1:-}" in
prepare)
    mkdir -p .git/info
    for ignored in /.whl/ /.device_data/; do
        grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
    done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${KERAS_WHEELS[@]}"
    source_root=${EMOTION_BENCH_FER_ROOT:-../shared/datasets/fer2013}
    rm -rf .device_data
    for class_folder in "$source_root"/train/*/; do
        class_name=$(basename "$class_folder")
        mkdir -p ".device_data/fer2013/train/$class_name"
        # The first faces by name, as bench/common.py's fer_images takes them.
        mapfile -t faces < <(find "$class_folder" -maxdepth 1 -type f | LC_ALL=C sort)
        cp -t ".device_data/fer2013/train/$class_name" "${faces[@]:0:$FER_PER_CLASS}"
    done
    echo "prepared: $(ls .whl | wc -l) wheels, $(find .device_data -type f | wc -l) faces, $(du -sh .whl .device_data | cut -f1 | paste -sd' ')"
    ;;
device)
    OUT=${OUT:-reports/device}
    mkdir -p "$OUT"
    mode=--gpu-only
    if [ "${DEVICE_CHECKS_QUICK:-0}" = 1 ]; then
        mode=--quick  # here, with the python3 of an environment that has Keras and JAX
    else
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    export EMOTION_BENCH_FER_ROOT=$PWD/.device_data/fer2013
    (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/gpu.txt" 2>&1
    python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
        >> "$OUT/gpu.txt" 2>&1
    # Each run is bounded, so that the later ones still have their turn and the reports come
    # back within the call's 570 s; the third (several training steps per compiled call, for the
    # small 48-pixel model of the FER2013 recipe) runs only with the time that is left.
    status=0
    timeout 300 python3 bench/training.py "$mode" --output training_gpu > "$OUT/training_gpu.log" 2>&1 || status=$?
    timeout 180 python3 bench/training.py "$mode" --resize-in-model --output training_gpu_resize_in_model \
        > "$OUT/training_gpu_resize_in_model.log" 2>&1 || status=$?
    left=$((540 - SECONDS))
    if [ "$left" -gt 60 ]; then
        timeout "$left" python3 bench/training.py "$mode" --resize-in-model --only seed_default_size \
            --steps-per-execution 8 --output training_gpu_steps_per_execution \
            > "$OUT/training_gpu_steps_per_execution.log" 2>&1 || status=$?
    fi
    cp reports/bench/training_gpu*.json "$OUT"/ 2>/dev/null || true
    cat "$OUT/gpu.txt"
    tail -n 12 "$OUT"/training_gpu*.log
    exit "$status"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 2
    ;;
esac
