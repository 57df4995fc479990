#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA tests on the GPU, then the CUDA benchmarks
# (normgen vs PyTorch CUDA vs a device copy of the same bytes). Writes
# bench/results/cuda-tests-STAMP.txt, cuda-STAMP.json and cuda-STAMP.png.
# Runs from the source tree (no install needed where numpy, numba, cupy, jinja2, pytest
# and torch are present). Budget: under 8 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NORMGEN_CACHE_DIR="${NORMGEN_CACHE_DIR:-$PWD/.normgen-cache}"
stamp="$(date +%Y%m%d-%H%M%S)"
out=bench/results
mkdir -p "$out"
python -c "from normgen.runtime.cuda import device_name; print('device:', device_name())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# tests: the GPU checks of every spec, and the emulator/nvcc tests
python -m pytest -q -x -p no:cacheprovider tests/test_cuda_gpu.py tests/test_cuda.py 2>&1 \
    | tee "$out/cuda-tests-$stamp.txt"
# benchmarks: float32 at reference and >= 64 MiB shapes; bfloat16 for the 64 MiB ones
python -m normgen bench --target cuda --repeat 20 --warmup 5 \
    --json "$out/cuda-$stamp.json" --plot "$out/cuda-$stamp.png"
python -m normgen bench --target cuda --dtype bfloat16 --repeat 20 --warmup 5 --case 16384, --case "[32,256" --case "[64,128" \
    --json "$out/cuda-bf16-$stamp.json" || echo "bfloat16 benchmark failed (see above)"
echo "results in $out/*-$stamp.*"
