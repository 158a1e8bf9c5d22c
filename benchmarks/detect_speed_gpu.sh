#!/usr/bin/env bash
# Issue 20's GPU-machine measurements in one go (16 cores, one GPU): the trained U-Net on CUDA beside MONAI and
# a naive whole-raster run, Dask workers scaling with CVA on the CPU cores, and CPU throughput of the
# label-free methods. Results (JSON lines and markdown tables) go to OUT (default ./speed-results).
#   benchmarks/detect_speed_gpu.sh [OUT]
set -uo pipefail
OUT=${1:-speed-results}
mkdir -p "$OUT"
W=${WORKDIR:-/tmp/cdtool-speed}
PY=${PYTHON:-python3}
B="$PY benchmarks/detect_speed.py"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout ${T1:-200} $B compare --size 8192 --model siam_diff_unet_rgb --device cuda --batch 16 --repeats ${REPEATS:-2} \
    --modes lean model read monai naive --workdir "$W" 2>&1 | tee "$OUT/compare_unet_cuda.txt"
timeout ${T2:-100} $B workers --size 8192 --model cva --workers 0 4 8 --repeats 1 --workdir "$W" 2>&1 | tee "$OUT/workers_cva.txt"
timeout ${T3:-90} $B throughput --size 8192 --models cva pca_kmeans --repeats 1 --workdir "$W" 2>&1 | tee "$OUT/throughput_cpu.txt"
