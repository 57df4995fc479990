"""The CUDA-on-CPU emulator: correct kernels give NumPy's answers, planted bugs are caught.

Every source here also compiles with the real nvcc for sm_80 and sm_90 with warnings as
errors (test_nvcc_accepts_the_test_sources), so the emulator runs nothing nvcc rejects.
Kernels are batched into a few sources: each g++ or nvcc compile costs about a second.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from normgen.testing.cuda_emu import EmulationError, compile_source, nvcc_check, nvcc_path
from normgen.errors import NormgenError

GOOD_SRC = r"""
#include "prelude.cuh"

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ void welford_merge(float& n, float& mean, float& m2, float nb, float mean_b, float m2_b) {
  const float total = n + nb;
  if (total == 0.f) return;
  const float delta = mean_b - mean;
  const float wb = nb / total;
  mean += delta * wb;
  m2 += m2_b + delta * delta * n * wb;
  n = total;
}

__device__ __forceinline__ void warp_welford(float& n, float& mean, float& m2) {
  for (int off = 16; off > 0; off >>= 1) {
    const float nb = __shfl_xor_sync(FULL_MASK, n, off);
    const float mb = __shfl_xor_sync(FULL_MASK, mean, off);
    const float m2b = __shfl_xor_sync(FULL_MASK, m2, off);
    welford_merge(n, mean, m2, nb, mb, m2b);
  }
}

// One row per block: mean and population variance (Welford), warp shuffles + shared memory.
extern "C" __global__ void welford_rows(const float* __restrict__ x, float* __restrict__ mean_out,
                                        float* __restrict__ var_out, int n) {
  NG_SHARED(float, s_n, 32);
  NG_SHARED(float, s_mean, 32);
  NG_SHARED(float, s_m2, 32);
  const float* row = x + (long long)blockIdx.x * n;
  float cnt = 0.f, mean = 0.f, m2 = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = row[i];
    cnt += 1.f;
    const float d = v - mean;
    mean += d / cnt;
    m2 += d * (v - mean);
  }
  warp_welford(cnt, mean, m2);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  if (lane == 0) {
    s_n[warp] = cnt;
    s_mean[warp] = mean;
    s_m2[warp] = m2;
  }
  __syncthreads();
  if (warp == 0) {
    cnt = lane < nwarps ? s_n[lane] : 0.f;
    mean = lane < nwarps ? s_mean[lane] : 0.f;
    m2 = lane < nwarps ? s_m2[lane] : 0.f;
    warp_welford(cnt, mean, m2);
    if (lane == 0) {
      mean_out[blockIdx.x] = mean;
      var_out[blockIdx.x] = m2 / cnt;
    }
  }
}

// Grid-stride y = a*x + b with float4 loads and stores, and a scalar tail.
extern "C" __global__ void affine_f4(const float* __restrict__ x, float* __restrict__ y, float a, float b, int n) {
  const int n4 = n / 4;
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* y4 = reinterpret_cast<float4*>(y);
  const int stride = blockDim.x * gridDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 v = __ldg(&x4[i]);
    v.x = fmaf(a, v.x, b);
    v.y = fmaf(a, v.y, b);
    v.z = fmaf(a, v.z, b);
    v.w = fmaf(a, v.w, b);
    y4[i] = v;
  }
  for (int i = 4 * n4 + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = fmaf(a, x[i], b);
}

// Split reduction, pass 1: one partial sum per block (shared-memory tree, power-of-two block).
extern "C" __global__ void partial_sums(const float* __restrict__ x, float* __restrict__ partial, int n) {
  NG_SHARED(float, buf, 1024);
  const int t = threadIdx.x;
  float v = 0.f;
  for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += x[i];
  buf[t] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) partial[blockIdx.x] = buf[0];
}

// Split reduction, pass 2: one block merges the partial sums (warp shuffles + shared memory).
extern "C" __global__ void merge_sums(const float* __restrict__ partial, float* __restrict__ out, int m) {
  NG_SHARED(float, warp_sums, 32);
  float v = 0.f;
  for (int i = threadIdx.x; i < m; i += blockDim.x) v += partial[i];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)((blockDim.x + 31) >> 5) ? warp_sums[lane] : 0.f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
    if (lane == 0) out[0] = v;
  }
}

// 2-D blocks: a tiled transpose through a padded shared tile.
#define TILE 32
extern "C" __global__ void transpose(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
  NG_SHARED(float, tile, TILE * (TILE + 1));
  int x = blockIdx.x * TILE + threadIdx.x;
  int y = blockIdx.y * TILE + threadIdx.y;
  for (int j = 0; j < TILE; j += blockDim.y)
    if (x < cols && y + j < rows) tile[(threadIdx.y + j) * (TILE + 1) + threadIdx.x] = in[(y + j) * cols + x];
  __syncthreads();
  x = blockIdx.y * TILE + threadIdx.x;
  y = blockIdx.x * TILE + threadIdx.y;
  for (int j = 0; j < TILE; j += blockDim.y)
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x * (TILE + 1) + threadIdx.y + j];
}

// Warp votes, block vote, shared and global atomics, __activemask in a branch.
extern "C" __global__ void votes(const float* __restrict__ x, unsigned* __restrict__ ballots, int* __restrict__ counts,
                                 int n) {
  NG_SHARED(int, hist, 4);
  const int t = threadIdx.x, lane = t & 31;
  const int i = blockIdx.x * blockDim.x + t;
  const float v = i < n ? x[i] : 0.f;
  const int pred = v > 0.f;
  const unsigned b = __ballot_sync(FULL_MASK, pred);
  if (lane == 0) ballots[i >> 5] = b;
  const int all_pos = __all_sync(FULL_MASK, pred), any_pos = __any_sync(FULL_MASK, pred);
  if (lane == 0) {
    atomicAdd(&counts[5], all_pos);
    atomicAdd(&counts[6], any_pos);
  }
  const int c = __syncthreads_count(pred);
  if (t == 0) atomicAdd(&counts[0], c);
  if (t < 4) hist[t] = 0;
  __syncthreads();
  if (i < n) atomicAdd(&hist[(v > 0.f) + 2 * (v > 1.f)], 1);
  __syncthreads();
  if (t < 4) atomicAdd(&counts[1 + t], (int)hist[t]);
  if (lane < 10) {
    const unsigned m = __activemask();
    if (i == 0) counts[7] = (int)m;
  }
}

// Warp-synchronous shared memory, ordered by __syncwarp (correct on Volta and later).
extern "C" __global__ void warp_tree(const float* __restrict__ x, float* __restrict__ out) {
  NG_SHARED(float, s, 32);
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * 32 + t];
  __syncwarp();
  for (int off = 16; off > 0; off >>= 1) {
    float v = 0.f;
    if (t < off) v = s[t + off];
    __syncwarp();
    if (t < off) s[t] += v;
    __syncwarp();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

extern "C" __global__ void to_half_bf16(const float* __restrict__ x, unsigned short* __restrict__ h_bits,
                                        float* __restrict__ h_back, unsigned short* __restrict__ b_bits,
                                        float* __restrict__ b_back, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const __half h = __float2half_rn(x[i]);
    h_bits[i] = __half_as_ushort(h);
    h_back[i] = __half2float(h);
    const __nv_bfloat16 b = __float2bfloat16_rn(x[i]);
    b_bits[i] = __bfloat16_as_ushort(b);
    b_back[i] = __bfloat162float(b);
  }
}

extern "C" __global__ void from_half_bf16(const __half* __restrict__ h, const __nv_bfloat16* __restrict__ b,
                                          float* __restrict__ hf, float* __restrict__ bf, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    hf[i] = __half2float(h[i]);
    bf[i] = __bfloat162float(b[i]);
  }
}

extern "C" __global__ void pairs(const float* __restrict__ x, float* __restrict__ out, unsigned short* __restrict__ bits,
                                 int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const __half2 h2 = __floats2half2_rn(x[i], -x[i]);
    const __half2 sw = __halves2half2(__high2half(h2), __low2half(h2));
    out[4 * i + 0] = __low2float(sw);
    out[4 * i + 1] = __high2float(sw);
    const __nv_bfloat162 b2 = __floats2bfloat162_rn(x[i], 2.f * x[i]);
    out[4 * i + 2] = __low2float(b2);
    out[4 * i + 3] = __high2float(b2);
    bits[2 * i + 0] = __half_as_ushort(__float2half(x[i]));
    bits[2 * i + 1] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
  }
}
"""

GOOD_KERNELS = ["welford_rows", "affine_f4", "partial_sums", "merge_sums", "transpose", "votes", "warp_tree",
                "to_half_bf16", "from_half_bf16", "pairs"]

BUGS_SRC = r"""
#include "prelude.cuh"
#include <assert.h>

// Planted bug: no __syncthreads() between the shared writes and the reads of other threads' elements.
extern "C" __global__ void bug_missing_sync(const float* __restrict__ x, float* __restrict__ y) {
  NG_SHARED(float, buf, 128);
  const int t = threadIdx.x;
  buf[t] = x[t];
  y[t] = buf[blockDim.x - 1 - t];
}

// Planted bug: a barrier inside a branch that only threads 0..15 take.
extern "C" __global__ void bug_divergent_sync(float* __restrict__ y) {
  NG_SHARED(float, buf, 64);
  const int t = threadIdx.x;
  buf[t] = (float)t;
  if (t < 16) __syncthreads();
  __syncthreads();
  y[t] = buf[63 - t];
}

// Planted bug: threads past n return before the block's barrier.
extern "C" __global__ void bug_early_return(const float* __restrict__ x, float* __restrict__ y, int n) {
  NG_SHARED(float, buf, 64);
  const int t = threadIdx.x;
  if (t >= n) return;
  buf[t] = x[t];
  __syncthreads();
  y[t] = buf[n - 1 - t];
}

// Planted bug: off-by-one shared index (thread 63 writes buf[64]).
extern "C" __global__ void bug_shared_oob(const float* __restrict__ x, float* __restrict__ y) {
  NG_SHARED(float, buf, 64);
  const int t = threadIdx.x;
  buf[t + 1] = x[t];
  __syncthreads();
  y[t] = buf[t];
}

// Planted bug: off-by-one bound on a global write (i <= n).
extern "C" __global__ void bug_global_oob(const float* __restrict__ x, float* __restrict__ y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = 2.f * x[i];
}

// Planted bug: every lane calls the shuffle, but the mask names lanes 0..15 only.
extern "C" __global__ void bug_shfl_mask(const float* __restrict__ x, float* __restrict__ y) {
  float v = x[threadIdx.x];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0x0000ffffu, v, off);
  if (threadIdx.x == 0) y[0] = v;
}

// Planted bug: lanes 0..15 shuffle among themselves but read lanes 16..31.
extern "C" __global__ void bug_shfl_outside(const float* __restrict__ x, float* __restrict__ y) {
  float v = x[threadIdx.x];
  if (threadIdx.x < 16) v += __shfl_down_sync(0x0000ffffu, v, 16);
  y[threadIdx.x] = v;
}

// Planted bug: lanes past n exit, the others shuffle with a full mask.
extern "C" __global__ void bug_shfl_exited(const float* __restrict__ x, float* __restrict__ y, int n) {
  const int t = threadIdx.x;
  if (t >= n) return;
  float v = x[t];
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  y[t] = v;
}

// Planted bug: warp-synchronous shared memory without __syncwarp (a race since Volta).
extern "C" __global__ void bug_warp_tree_nosync(const float* __restrict__ x, float* __restrict__ out) {
  NG_SHARED(float, s, 32);
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * 32 + t];
  __syncwarp();
  for (int off = 16; off > 0; off >>= 1)
    if (t < off) s[t] += s[t + off];
  if (t == 0) out[blockIdx.x] = s[0];
}

// Planted bug: threads 32..63 read shared elements nobody wrote.
extern "C" __global__ void bug_uninit(float* __restrict__ y) {
  NG_SHARED(float, buf, 64);
  if (threadIdx.x < 32) buf[threadIdx.x] = 1.f;
  __syncthreads();
  y[threadIdx.x] = buf[threadIdx.x];
}

// Planted bug: block 0 spins on a flag that block 1 sets (inter-block wait).
extern "C" __global__ void bug_spin(volatile int* flag) {
  if (blockIdx.x == 0) {
    while (flag[0] == 0) {
      if (threadIdx.x > 4096) break;
    }
  } else {
    flag[0] = 1;
  }
}

// A loop that reaches no emulated construct: the time limit cannot stop it.
extern "C" __global__ void busy_loop(volatile float* out, long long iters) {
  float acc = 0.f;
  for (long long i = 0; i < iters; ++i) {
    out[0] = acc;
    acc += 1.f;
  }
}

extern "C" __global__ void bug_assert(const float* __restrict__ x) { assert(x[threadIdx.x] >= 0.f); }
"""

# nvcc rejects this one too (too much static shared memory): checked in test_nvcc_agrees_on_shared_limit.
EXTRA_SRC = r"""
#include "prelude.cuh"
extern "C" __global__ void too_much_shared(float* y) {
  NG_SHARED(float, big, 13000);
  big[threadIdx.x] = 1.f;
  __syncthreads();
  y[threadIdx.x] = big[threadIdx.x];
}
"""


@pytest.fixture(scope="module")
def good():
    return compile_source(GOOD_SRC, GOOD_KERNELS, name="good.cu")


@pytest.fixture(scope="module")
def bugs():
    names = ["bug_missing_sync", "bug_divergent_sync", "bug_early_return", "bug_shared_oob", "bug_global_oob",
             "bug_shfl_mask", "bug_shfl_outside", "bug_shfl_exited", "bug_warp_tree_nosync", "bug_uninit",
             "bug_spin", "busy_loop", "bug_assert"]
    return compile_source(BUGS_SRC, names, name="bugs.cu")


def line_of(src: str, text: str, after: str = "") -> int:
    """The 1-based number of the first line of `src` that contains `text` (below the line with `after`)."""
    lines = src.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines[start:], start + 1) if text in line)


# --- correct kernels -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [128, 96])
def test_welford_block_reduction_matches_numpy(good, rng, block):
    x = (rng.standard_normal((12, 1000)) * 3 + 5).astype(np.float32)
    mean, var = np.zeros(12, np.float32), np.zeros(12, np.float32)
    good.launch("welford_rows", grid=12, block=block, args=(x, mean, var, np.int32(1000)))
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=1), rtol=1e-4)


def test_grid_stride_float4_with_tail(good, rng):
    n = 1003
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    good.launch("affine_f4", grid=3, block=64, args=(x, y, np.float32(1.5), np.float32(-2.0), np.int32(n)))
    np.testing.assert_allclose(y, 1.5 * x.astype(np.float64) - 2.0, rtol=1e-6, atol=1e-6)


def test_in_place_and_offset_views_alias_as_on_the_gpu(good, rng):
    base = rng.standard_normal(404).astype(np.float32)
    view = base.copy()[4:]  # an offset view: 16 bytes past its allocation, still float4-aligned
    expect = 2.0 * view.astype(np.float64) + 1.0
    good.launch("affine_f4", grid=2, block=32, args=(view, view, np.float32(2), np.float32(1), np.int32(400)))
    np.testing.assert_allclose(view, expect, rtol=1e-6)


def test_two_kernel_split_reduction(good, rng):
    n = 64 * 256 * 2 + 77
    x = rng.random(n).astype(np.float32)
    partial = np.zeros(64, np.float32)
    out = np.zeros(1, np.float32)
    good.launch("partial_sums", grid=64, block=256, args=(x, partial, np.int32(n)))
    good.launch("merge_sums", grid=1, block=128, args=(partial, out, np.int32(64)))
    np.testing.assert_allclose(out[0], x.astype(np.float64).sum(), rtol=1e-5)


@pytest.mark.parametrize("order", ["reverse", "random"])
def test_results_do_not_depend_on_the_order(good, rng, order):
    n = 32 * 128 + 5
    x = rng.random(n).astype(np.float32)
    ref, other = np.zeros(32, np.float32), np.zeros(32, np.float32)
    good.launch("partial_sums", grid=32, block=128, args=(x, ref, np.int32(n)))
    good.launch("partial_sums", grid=32, block=128, args=(x, other, np.int32(n)), order=order, seed=7, workers=2)
    np.testing.assert_array_equal(other, ref)


def test_two_dimensional_blocks_transpose(good, rng):
    rows, cols = 50, 70
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    out = np.zeros((cols, rows), np.float32)
    good.launch("transpose", grid=(3, 2), block=(32, 8), args=(a, out, np.int32(rows), np.int32(cols)))
    np.testing.assert_array_equal(out, a.T)


def test_votes_atomics_and_activemask(good, rng):
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    ballots = np.zeros(32, np.uint32)
    counts = np.zeros(8, np.int32)
    good.launch("votes", grid=4, block=256, args=(x, ballots, counts, np.int32(n)))
    pos = np.zeros(1024, bool)
    pos[:n] = x > 0
    expect_ballots = [sum(1 << j for j in range(32) if pos[32 * w + j]) for w in range(32)]
    assert ballots.tolist() == expect_ballots
    assert counts[0] == pos.sum()
    assert counts[1:5].tolist() == [int((x <= 0).sum()), int(((x > 0) & (x <= 1)).sum()), 0, int((x > 1).sum())]
    warps = pos.reshape(32, 32)
    assert counts[5] == warps.all(axis=1).sum() and counts[6] == warps.any(axis=1).sum()
    assert counts[7] == 0x3FF


def test_syncwarp_orders_warp_synchronous_shared_memory(good, rng):
    x = rng.random(4 * 32).astype(np.float32)
    out = np.zeros(4, np.float32)
    good.launch("warp_tree", grid=4, block=32, args=(x, out), order="random", seed=1)
    np.testing.assert_allclose(out, x.reshape(4, 32).astype(np.float64).sum(axis=1), rtol=1e-6)


def _special_floats() -> np.ndarray:
    f16 = np.finfo(np.float16)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-11 + 2**-20,
                float(f16.max), 65519.99, 65520.0, 2**-24, 2**-25, 2**-25 * 1.0001, 2**-26, 3 * 2**-25,
                float(f16.tiny), float(f16.tiny) * (1 - 2**-12), 1e-30, 3.4028235e38, -3.4028235e38, 1.00390625,
                1.01171875, 1.0078125]
    return np.array(specials + [-s for s in specials], np.float32)


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits by round-to-nearest-even on the values: choose the nearer of the two bf16 neighbours."""
    with np.errstate(invalid="ignore"):
        return _bf16_rne(x)


def _bf16_rne(x: np.ndarray) -> np.ndarray:
    bits = x.view(np.uint32)
    sign = (bits & 0x80000000).astype(np.uint64)
    mag = bits & 0x7FFFFFFF
    lower = mag & 0xFFFF0000
    upper = lower + 0x10000
    value = np.abs(x.astype(np.float64))
    lo_val = lower.astype(np.uint32).view(np.float32).astype(np.float64)
    hi_val = np.where(upper >= 0x7F800000, 2.0**128, upper.astype(np.uint32).view(np.float32).astype(np.float64))
    d_lo, d_hi = value - lo_val, hi_val - value
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & ((lower >> 16) & 1 == 1))
    out = np.where(pick_hi, upper, lower) >> 16
    out = np.where(mag == 0x7F800000, 0x7F80, out)  # infinities stay
    out = (out | (sign >> 16)).astype(np.uint16)
    return np.where(mag > 0x7F800000, np.uint16(0x7FFF), out)  # NaN: canonical, as CUDA


def test_half_and_bfloat16_conversions_are_bit_exact(good, rng):
    random_bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    in_range = (rng.standard_normal(20000) * np.exp2(rng.integers(-26, 17, 20000))).astype(np.float32)
    x = np.concatenate([_special_floats(), random_bits, in_range])
    n = x.size
    h_bits, b_bits = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
    h_back, b_back = np.zeros(n, np.float32), np.zeros(n, np.float32)
    good.launch("to_half_bf16", grid=16, block=128, args=(x, h_bits, h_back, b_bits, b_back, np.int32(n)))
    nan = np.isnan(x)
    with np.errstate(over="ignore"):
        ref_half = x.astype(np.float16)
    np.testing.assert_array_equal(h_bits[~nan], ref_half[~nan].view(np.uint16))
    assert (h_bits[nan] == 0x7FFF).all()
    np.testing.assert_array_equal(h_back[~nan].view(np.uint32), ref_half[~nan].astype(np.float32).view(np.uint32))
    assert np.isnan(h_back[nan]).all()
    np.testing.assert_array_equal(b_bits, _bf16_reference(x))
    np.testing.assert_array_equal(b_back.view(np.uint32), b_bits.astype(np.uint32) << 16)


def test_every_half_and_bfloat16_bit_pattern_decodes_exactly(good):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16)
    hf, bf = np.zeros(65536, np.float32), np.zeros(65536, np.float32)
    good.launch("from_half_bf16", grid=64, block=256, args=(halves, bits, hf, bf, np.int32(65536)))
    nan = np.isnan(halves)
    np.testing.assert_array_equal(hf[~nan].view(np.uint32), halves[~nan].astype(np.float32).view(np.uint32))
    assert np.isnan(hf[nan]).all()
    np.testing.assert_array_equal(bf.view(np.uint32), bits.astype(np.uint32) << 16)


def test_half2_and_bfloat162_pairs(good, rng):
    x = np.concatenate([_special_floats(), rng.standard_normal(500).astype(np.float32) * 100])
    x = x[~np.isnan(x)]
    n = x.size
    out, bits = np.zeros(4 * n, np.float32), np.zeros(2 * n, np.uint16)
    good.launch("pairs", grid=4, block=64, args=(x, out, bits, np.int32(n)))
    with np.errstate(over="ignore"):
        h, hneg = x.astype(np.float16).astype(np.float32), (-x).astype(np.float16).astype(np.float32)
    bf = lambda v: (_bf16_reference(v).astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    got = out.reshape(n, 4)
    np.testing.assert_array_equal(got[:, 0], hneg)  # halves swapped
    np.testing.assert_array_equal(got[:, 1], h)
    np.testing.assert_array_equal(got[:, 2], bf(x))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got[:, 3], bf((2 * x).astype(np.float32)))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(bits.reshape(n, 2)[:, 0], x.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(bits.reshape(n, 2)[:, 1], _bf16_reference(x))


def test_cupy_style_get_function_and_performance(good, rng):
    n = 64 * 256 * 4
    x = rng.random(n).astype(np.float32)
    partial = np.zeros(64, np.float32)
    kernel = good.get_function("partial_sums")
    start = time.perf_counter()
    kernel((64,), (256,), (x, partial, np.int32(n)))  # 64 blocks x 256 threads, 9 barriers each
    elapsed = time.perf_counter() - start
    np.testing.assert_allclose(partial.sum(dtype=np.float64), x.astype(np.float64).sum(), rtol=1e-5)
    assert elapsed < 2.0, f"64 x 256 launch took {elapsed:.2f} s"


# --- arguments -------------------------------------------------------------------------------------------------------


def test_arguments_are_checked_against_the_kernel_signature(good):
    x, y = np.zeros(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(EmulationError, match=r"argument 4 of 'affine_f4' \(int n\).*Python int.*np\.int32") as e:
        good.launch("affine_f4", grid=1, block=32, args=(x, y, np.float32(1), np.float32(0), 8))
    assert e.value.kind == "argument" and isinstance(e.value, NormgenError)
    with pytest.raises(EmulationError, match=r"argument 0 .*const float\* x.*float32 array, got float64"):
        good.launch("affine_f4", grid=1, block=32, args=(x.astype(np.float64), y, np.float32(1), np.float32(0),
                                                         np.int32(8)))
    with pytest.raises(EmulationError, match=r"int n.*got a int64 scalar"):
        good.launch("affine_f4", grid=1, block=32, args=(x, y, np.float32(1), np.float32(0), np.int64(8)))
    with pytest.raises(EmulationError, match="takes 5 arguments"):
        good.launch("affine_f4", grid=1, block=32, args=(x, y))
    with pytest.raises(EmulationError, match="at most 1024 threads") as e:
        good.launch("affine_f4", grid=1, block=(64, 32), args=(x, y, np.float32(1), np.float32(0), np.int32(8)))
    assert e.value.kind == "config"


def test_writing_a_read_only_array_is_reported(good):
    x, y = np.ones(8, np.float32), np.zeros(8, np.float32)
    y.flags.writeable = False
    with pytest.raises(EmulationError, match=r"wrote to read-only array argument 1 \(float\* y\)") as e:
        good.launch("affine_f4", grid=1, block=32, args=(x, y, np.float32(1), np.float32(0), np.int32(8)))
    assert e.value.kind == "readonly-write"


# --- planted bugs ----------------------------------------------------------------------------------------------------


def test_missing_syncthreads_is_a_race(bugs):
    x, y = np.arange(128, dtype=np.float32), np.zeros(128, np.float32)
    with pytest.raises(EmulationError) as e:
        bugs.launch("bug_missing_sync", grid=2, block=128, args=(x, y))
    err = e.value
    assert err.kind == "race" and err.kernel == "bug_missing_sync" and err.block == (0, 0, 0)
    msg = str(err)
    # Threads run in order between barriers: thread 63 reads buf[64] before thread 64 writes it.
    assert "write-after-read on 'buf' (float[128]" in msg and "element 64\n" in msg
    assert f"read   by thread 63 at bugs.cu:{line_of(BUGS_SRC, 'y[t] = buf[blockDim.x - 1 - t]')}" in msg
    assert f"write  by thread 64 at bugs.cu:{line_of(BUGS_SRC, 'buf[t] = x[t];')}" in msg
    assert "buf[t] = x[t];" in msg  # the source line itself


def test_missing_syncthreads_is_a_race_in_reverse_order_too(bugs):
    x, y = np.arange(128, dtype=np.float32), np.zeros(128, np.float32)
    with pytest.raises(EmulationError, match=r"write-after-read on 'buf' .*element 63\n  read   by thread 64") as e:
        bugs.launch("bug_missing_sync", grid=2, block=128, args=(x, y), order="reverse")
    assert e.value.kind == "race" and e.value.block == (1, 0, 0)


def test_syncthreads_in_a_branch_is_divergence_not_a_hang(bugs):
    y = np.zeros(64, np.float32)
    start = time.perf_counter()
    with pytest.raises(EmulationError) as e:
        bugs.launch("bug_divergent_sync", grid=1, block=64, args=(y,))
    assert time.perf_counter() - start < 5
    msg = str(e.value)
    assert e.value.kind == "barrier" and "divergent barrier" in msg
    assert f"threads 0..15 wait at __syncthreads() at bugs.cu:{line_of(BUGS_SRC, 'if (t < 16) __syncthreads();')}" in msg
    assert "threads 16..63 wait at __syncthreads() at bugs.cu:" in msg


def test_early_return_before_a_barrier(bugs):
    x, y = np.ones(64, np.float32), np.zeros(64, np.float32)
    with pytest.raises(EmulationError, match=r"reached by threads 0\.\.39, but threads 40\.\.63 had already exited") as e:
        bugs.launch("bug_early_return", grid=1, block=64, args=(x, y, np.int32(40)))
    assert e.value.kind == "barrier"
    bugs.launch("bug_early_return", grid=1, block=64, args=(x, y, np.int32(64)))  # fine when no thread returns


def test_off_by_one_shared_index(bugs):
    x, y = np.ones(64, np.float32), np.zeros(64, np.float32)
    with pytest.raises(EmulationError) as e:
        bugs.launch("bug_shared_oob", grid=1, block=64, args=(x, y))
    msg = str(e.value)
    assert e.value.kind == "shared-bounds"
    assert f"write of 'buf' (float[64], declared at bugs.cu:{line_of(BUGS_SRC, 'NG_SHARED', 'bug_shared_oob(')})" in msg
    assert "at index 64 by thread 63" in msg and "valid indices are 0..63" in msg


def test_off_by_one_global_write_hits_the_guard(bugs):
    x, y = np.ones(100, np.float32), np.zeros(100, np.float32)
    with pytest.raises(EmulationError) as e:
        bugs.launch("bug_global_oob", grid=4, block=32, args=(x, y, np.int32(100)))
    assert e.value.kind == "global-bounds"
    assert "argument 1 (float* y), a float32 array of 100 elements" in str(e.value)
    assert "elements 100..100" in str(e.value)
    assert (y == 0).all()  # nothing is copied back from a failed launch


def test_shuffle_mask_without_the_calling_lane(bugs):
    x, y = np.ones(32, np.float32), np.zeros(1, np.float32)
    with pytest.raises(EmulationError, match=r"__shfl_down_sync at bugs\.cu:\d+: lane 16 \(thread 16\) calls it with "
                                             r"mask 0x0000ffff, which does not include") as e:
        bugs.launch("bug_shfl_mask", grid=1, block=32, args=(x, y))
    assert e.value.kind == "warp"


def test_shuffle_reading_a_lane_outside_the_mask(bugs):
    x, y = np.ones(32, np.float32), np.zeros(32, np.float32)
    with pytest.raises(EmulationError, match=r"lane 0 \(thread 0\) reads lane 16, which is not in the mask") as e:
        bugs.launch("bug_shfl_outside", grid=1, block=32, args=(x, y))
    assert e.value.kind == "warp"


def test_shuffle_naming_exited_lanes(bugs):
    x, y = np.ones(32, np.float32), np.zeros(32, np.float32)
    with pytest.raises(EmulationError, match=r"can never complete.*\n    lane 20 \(thread 20\) has exited"):
        bugs.launch("bug_shfl_exited", grid=1, block=32, args=(x, y, np.int32(20)))
    with pytest.raises(EmulationError, match=r"names lanes that do not exist.*warp 1 of this 48-thread block"):
        bugs.launch("bug_shfl_exited", grid=1, block=48, args=(x[:1].repeat(48), y[:1].repeat(48), np.int32(48)))


def test_warp_synchronous_code_without_syncwarp_is_a_race(bugs):
    x, out = np.ones(32, np.float32), np.zeros(1, np.float32)
    with pytest.raises(EmulationError, match=r"same warp") as e:
        bugs.launch("bug_warp_tree_nosync", grid=1, block=32, args=(x, out))
    assert e.value.kind == "race"


def test_read_of_unwritten_shared_memory(bugs):
    y = np.zeros(64, np.float32)
    with pytest.raises(EmulationError, match=r"read of 'buf' .* element 32 by thread 32 .* no thread of this block "
                                             r"has written") as e:
        bugs.launch("bug_uninit", grid=1, block=64, args=(y,))
    assert e.value.kind == "uninitialized"
    bugs.launch("bug_uninit", grid=1, block=64, args=(y,), check_uninitialized=False)
    assert np.isnan(y[32:]).all() and (y[:32] == 1).all()  # the loud fill of fresh shared memory


def test_spin_wait_on_another_block_times_out(bugs):
    flag = np.zeros(1, np.int32)
    start = time.perf_counter()
    with pytest.raises(EmulationError, match=r"time limit of 0\.3 s; thread 0 was at bugs\.cu:\d+") as e:
        bugs.launch("bug_spin", grid=2, block=32, args=(flag,), timeout=0.3)
    assert e.value.kind == "timeout" and e.value.block == (0, 0, 0)
    assert time.perf_counter() - start < 3
    bugs.launch("bug_spin", grid=2, block=32, args=(flag,), order="reverse")  # block 1 first: no wait


def test_uninterruptible_loop_is_abandoned_not_hung(bugs):
    out = np.zeros(1, np.float32)
    start = time.perf_counter()
    with pytest.raises(EmulationError, match="abandoned") as e:
        bugs.launch("busy_loop", grid=1, block=1, args=(out, np.int64(10**9)), timeout=0.1)
    assert e.value.kind == "abandoned"
    assert time.perf_counter() - start < 3


def test_device_assert_names_the_thread(bugs):
    x = np.ones(32, np.float32)
    x[5] = -1
    with pytest.raises(EmulationError, match=r"assertion failed: x\[threadIdx.x\] >= 0.f, in thread 5 at bugs.cu") as e:
        bugs.launch("bug_assert", grid=1, block=32, args=(x,))
    assert e.value.kind == "trap"


# --- compiling -------------------------------------------------------------------------------------------------------


def test_too_much_shared_memory_is_reported():
    mod = compile_source(EXTRA_SRC, ["too_much_shared"], name="extra.cu")
    with pytest.raises(EmulationError, match=r"need 52000 bytes .* more than the 49152 bytes") as e:
        mod.launch("too_much_shared", grid=1, block=32, args=(np.zeros(32, np.float32),))
    assert e.value.kind == "shared-bounds"


def test_compile_errors_show_the_numbered_source():
    src = '#include "prelude.cuh"\nextern "C" __global__ void k(float* y) {\n  __shared__ float s[4];\n  y[0] = s[0];\n}\n'
    with pytest.raises(EmulationError) as e:
        compile_source(src, ["k"], name="plain.cu")
    msg = str(e.value)
    assert e.value.kind == "compile"
    assert "plain.cu:3" in msg and "declare shared arrays with NG_SHARED" in msg
    assert "    3 |   __shared__ float s[4];" in msg


def test_two_modules_with_the_same_kernel_name_stay_separate():
    src = '#include "prelude.cuh"\nextern "C" __global__ void fill(float* y) {{ y[threadIdx.x] = {}; }}\n'
    one = compile_source(src.format("1.f"), ["fill"])
    two = compile_source(src.format("2.f"), ["fill"])
    again = compile_source(src.format("1.f"), ["fill"])  # from the cache
    assert again.path == one.path and one.path != two.path
    a, b = np.zeros(4, np.float32), np.zeros(4, np.float32)
    one.launch("fill", grid=1, block=4, args=(a,))
    two.launch("fill", grid=1, block=4, args=(b,))
    assert (a == 1).all() and (b == 2).all()
    assert not list(one.path.parent.glob("*.tmp")) and not list(two.path.parent.glob("*.tmp"))


needs_nvcc = pytest.mark.skipif(nvcc_path() is None, reason="nvcc not installed")


@needs_nvcc
@pytest.mark.parametrize("name", ["good", "bugs"])
def test_nvcc_accepts_the_test_sources(name):
    nvcc_check({"good": GOOD_SRC, "bugs": BUGS_SRC}[name], archs=("sm_80", "sm_90"), name=f"{name}.cu")


@needs_nvcc
def test_nvcc_agrees_on_shared_limit():
    with pytest.raises(EmulationError, match="shared data") as e:
        nvcc_check(EXTRA_SRC, archs=("sm_80",), name="extra.cu")
    assert e.value.kind == "nvcc"
