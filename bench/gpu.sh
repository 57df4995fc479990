#!/usr/bin/env bash
# On a machine with a CUDA GPU (issue 14): the CUDA tests, then the CUDA benchmarks (normgen vs
# PyTorch eager vs torch.compile vs a device copy of the same bytes, L2 flushed before every
# timed call). Writes bench/results/gpu-tests-STAMP.txt, gpu-STAMP.json, gpu-STAMP.svg and
# gpu-plans-STAMP.json (the plans that ran, with their modeled traffic).
#
# Runs from the source tree, without network, where numpy, numba, cupy, jinja2, pytest,
# hypothesis and torch are installed (pytest-xdist is used when present). Each phase has a
# time limit, so the whole script stays under 9 minutes on an H100 and what finished is kept:
#   warm-up compile 90 s | tests 180 s (GPU checks first) | NCCL one-rank check 60 s | float32
#   benchmark 150 s (torch.compile: 70 s of it): 8 minutes and some seconds of start-up.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NORMGEN_CACHE_DIR="${NORMGEN_CACHE_DIR:-$PWD/.normgen-cache}"
stamp="$(date +%Y%m%d-%H%M%S)"
out=bench/results
mkdir -p "$out"
start=$SECONDS
python -c "from normgen.runtime.cuda import device_name; print('device:', device_name())"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader || true

# 1. compile the modules the tests and benchmarks load, on every core (CuPy caches them on disk)
timeout 90 python bench/gpu_warm.py || echo "gpu_warm: stopped (the rest compiles on first use)"

# 2. tests: every spec on the GPU against the oracle, the plans, the PTX, the emulator and nvcc
par=""
python -c "import xdist" 2>/dev/null && par="-n 8"
timeout 180 python -m pytest -q -p no:cacheprovider $par tests/test_cuda_gpu.py tests/test_cuda_plans.py \
    tests/test_cuda_ptx.py tests/test_cuda.py 2>&1 | tee "$out/gpu-tests-$stamp.txt"
echo "tests: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/gpu-tests-$stamp.txt"

# 2b. statistics across ranks on the device: a one-rank NCCL group, a sync-debug forward and a
#     CUDA graph capture of the forward with its collectives (bench/gpu_nccl.py)
timeout 60 python bench/gpu_nccl.py 2>&1 | tee -a "$out/gpu-tests-$stamp.txt"
echo "gpu_nccl: exit ${PIPESTATUS[0]}" | tee -a "$out/gpu-tests-$stamp.txt"

# 3. benchmarks, float32: the reference shapes and the >= 64 MiB ones
python bench/cuda_plans.py --json "$out/gpu-plans-$stamp.json" > /dev/null || true
timeout 150 python -m normgen bench --target cuda --repeat 20 --warmup 3 --compile-budget 70 \
    --json "$out/gpu-$stamp.json" --plot "$out/gpu-$stamp.svg" || echo "benchmark: stopped (see above)"
echo "done in $((SECONDS - start)) s; results in $out/gpu-*-$stamp.* and $out/gpu-$stamp.*"
