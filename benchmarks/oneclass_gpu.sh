#!/usr/bin/env bash
# Paper 004's Fashion-MNIST table (issue 17) on a GPU machine: every class normal in turn, the three methods
# (rotnet_ae, CAE, RotNet score), seeds 0 1 2, at the same scaled settings as the CPU table in README.md
# (1,000 training images, 3 epochs per stage, ResNet-18 at width 8, stage-2 lr 1e-3, a seeded 2,000-image
# test subset). One process per (class, seed) runs the three methods; JOBS of them run at once, each training
# on DEVICE with one CPU thread. Every process writes its rows as JSON under OUT; the merged tables (per class,
# mean ± std, class means per seed) go to OUT/tables.md.
#
#   benchmarks/oneclass_gpu.sh OUT                       # cuda, classes 0-9, seeds 0 1 2, 8 at a time
#   DEVICE=cpu CLASSES=0 SEEDS=0 benchmarks/oneclass_gpu.sh /tmp/gpu_check   # a CPU check of one run
#
# Measured on one H200 (16 cores, JOBS=8): 96 s for the 90 runs (rotnet_ae 11 s, CAE 2 s, RotNet score 3 s
# per run). Where cdtool is not installed, the checkout is put on PYTHONPATH.
#
# Environment: DEVICE (cuda), CLASSES ("0 1 2 3 4 5 6 7 8 9"), SEEDS ("0 1 2"), JOBS (8), PYTHON (python3),
# EPOCHS (3). Needs Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
set -euo pipefail
OUT=${1:?usage: benchmarks/oneclass_gpu.sh OUT_FOLDER}
DEVICE=${DEVICE:-cuda}
CLASSES=${CLASSES:-0 1 2 3 4 5 6 7 8 9}
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-8}
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
cd "$REPO"
if [[ $DEVICE == cuda* ]]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
    "$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(0))"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # cdtool from this checkout, installed or not
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 DEVICE EPOCHS OUT PYTHON
start=$(date +%s)
for s in $SEEDS; do for c in $CLASSES; do echo "$c $s"; done; done |
    xargs -P "$JOBS" -L 1 bash -c '
        c=$0 s=$1
        "$PYTHON" benchmarks/oneclass_table.py p004 --source fashion_mnist --classes "$c" --seeds "$s" \
            --subset 1000 --val-subset 2000 --epochs "$EPOCHS" --width 8 --dec-lr 0.001 --device "$DEVICE" \
            --json "$OUT/p004_fmnist_c${c}_s${s}.json" > "$OUT/logs/c${c}_s${s}.log" 2>&1 \
            || { echo "class $c seed $s failed: see $OUT/logs/c${c}_s${s}.log" >&2; exit 255; }
        echo "class $c seed $s done ($(( $(date +%s) - '"$start"' )) s)"'
"$PYTHON" benchmarks/oneclass_table.py tables --inputs "$OUT"/p004_fmnist_c*_s*.json | tee "$OUT/tables.md"
echo "total wall: $(( $(date +%s) - start )) s on $DEVICE, $JOBS at a time" | tee -a "$OUT/tables.md"
