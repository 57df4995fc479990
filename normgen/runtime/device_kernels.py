"""Small fixed CUDA kernels that keep statistics on the device between normgen's generated
kernels: the sums that cross ranks, and the running-statistic update.

They are the same for every spec (one thread per statistics group or running entry, float64
throughout), so they are written here once instead of generated per plan; what depends on
the spec (finalizing moments into kstats, the backward's coefficients) stays in the plan's
own `forward_merge` / `backward_merge`, which the callers run on these kernels' outputs
(runtime/cuda_ranks.py). The source compiles with nvcc/NVRTC for the GPU and with g++ for the
CPU emulator, like every generated source (the prelude picks which).

Layouts: moments are [groups, 3] (count, mean, M2); the rank sums are one contiguous float64
buffer, so each collective reduces one slice of it:

    sums[0:g]   count            \\ the first all-reduce: the mean of every group
    sums[g:2g]  count * mean     /
    sums[2g:3g] M2 + count * (mean - global mean)^2    the second all-reduce: M2 about it
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..codegen.render import cuda_prelude

#: threads per block of these kernels (whole warps); a grid-stride loop covers any size
BLOCK = 256
#: at most this many blocks: the statistics are small, one pass of 256 x 1024 threads covers most
MAX_BLOCKS = 1024

_BODY = r"""
// normgen runtime/device_kernels.py: statistics kept on the device (one thread per group).
#define NG_EACH(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
                           i += (long long)gridDim.x * blockDim.x)

// sums[0:g] = count, sums[g:2g] = count * mean: what the first all-reduce adds over the ranks.
extern "C" __global__ void ranks_mean_sums(const double* moments, double* sums, long long n_groups) {
    NG_EACH(g, n_groups) {
        const double n = moments[3 * g];
        sums[g] = n;
        sums[n_groups + g] = n > 0.0 ? n * moments[3 * g + 1] : 0.0;  // a rank without elements has no mean
    }
}

// sums[2g:3g] = M2 + count * (mean - mu)^2 with mu = the reduced count * mean / count: every
// term is >= 0, so their sum over the ranks is M2 about the global mean without cancellation.
extern "C" __global__ void ranks_m2_sums(const double* moments, double* sums, long long n_groups) {
    NG_EACH(g, n_groups) {
        const double total = sums[g];
        const double mu = total > 0.0 ? sums[n_groups + g] / total : 0.0;
        const double n = moments[3 * g], d = moments[3 * g + 1] - mu;
        sums[2 * n_groups + g] = n > 0.0 ? moments[3 * g + 2] + n * d * d : 0.0;
    }
}

// The reduced sums as moments [g, 3] (count, mean, M2), for the plan's forward_merge (one part).
extern "C" __global__ void ranks_moments(const double* sums, double* parts, long long n_groups) {
    NG_EACH(g, n_groups) {
        const double n = sums[g];
        parts[3 * g] = n;
        parts[3 * g + 1] = n > 0.0 ? sums[n_groups + g] / n : 0.0;
        parts[3 * g + 2] = sums[2 * n_groups + g];
    }
}

// sums[0:g] = sum g, sums[g:2g] = sum g * x_hat: the backward's per-group totals [g, 4], packed
// for the all-reduce (their last two columns are parameter-gradient sums, which stay local).
extern "C" __global__ void ranks_grad_pack(const double* totals, double* sums, long long n_groups) {
    NG_EACH(g, n_groups) {
        sums[g] = totals[4 * g];
        sums[n_groups + g] = totals[4 * g + 1];
    }
}

// One part [g, 4] per group for the plan's backward_merge run with count = 1: the reduced sums
// divided by each group's count over all ranks (moments[3 g]), which the merge's scalar count
// cannot give; sum g * x_hat is left whole when the scale has no 1/n (l2).
extern "C" __global__ void ranks_grad_parts(const double* sums, const double* moments, double* parts,
                                            long long n_groups, int per_count) {
    NG_EACH(g, n_groups) {
        const double n = moments[3 * g];
        parts[4 * g] = sums[g] / n;
        parts[4 * g + 1] = per_count ? sums[n_groups + g] / n : sums[n_groups + g];
        parts[4 * g + 2] = 0.0;
        parts[4 * g + 3] = 0.0;
    }
}

// PyTorch's running update, per running entry r, from the moments of its k member groups
// (members[r * k + j]; InstanceNorm averages over N):
//   running_mean = (1 - f) * running_mean + f * avg(mean),  running_var likewise with avg(M2 / (n - 1)).
#define NG_RUNNING_UPDATE(NAME, T)                                                                          \
extern "C" __global__ void NAME(const double* moments, const long long* members, long long n_running,      \
                                long long k, double factor, T* running_mean, T* running_var) {             \
    NG_EACH(r, n_running) {                                                                                \
        double mean = 0.0, var = 0.0;                                                                      \
        for (long long j = 0; j < k; ++j) {                                                                \
            const long long g = members[r * k + j];                                                        \
            mean += moments[3 * g + 1];                                                                    \
            var += moments[3 * g + 2] / (moments[3 * g] - 1.0);                                            \
        }                                                                                                  \
        running_mean[r] = (T)((1.0 - factor) * (double)running_mean[r] + factor * (mean / (double)k));     \
        running_var[r] = (T)((1.0 - factor) * (double)running_var[r] + factor * (var / (double)k));        \
    }                                                                                                      \
}
NG_RUNNING_UPDATE(running_update_f32, float)
NG_RUNNING_UPDATE(running_update_f64, double)

// Evaluation: every group's kstats (mean hi, mean lo, rstd) from its running entry, as the host's
// op/running.py running_normalizer and op/stats.py kstats compute them (float64, then the
// statistics' type CT; lo keeps the digits of the mean that hi loses in float32).
#define NG_EVAL_KSTATS(NAME, R, CT)                                                                         \
extern "C" __global__ void NAME(const R* running_mean, const R* running_var, const long long* members,     \
                                long long n_running, long long k, double eps, CT* kstats) {                \
    NG_EACH(r, n_running) {                                                                                \
        const double mean = (double)running_mean[r];                                                       \
        const CT hi = (CT)mean, lo = (CT)(mean - (double)hi);                                              \
        const CT rs = (CT)(1.0 / sqrt((double)running_var[r] + eps));                                      \
        for (long long j = 0; j < k; ++j) {                                                                \
            const long long g = members[r * k + j];                                                        \
            kstats[3 * g] = hi;                                                                            \
            kstats[3 * g + 1] = lo;                                                                        \
            kstats[3 * g + 2] = rs;                                                                        \
        }                                                                                                  \
    }                                                                                                      \
}
// Parameter gradients: dw[p], db[p] = the sums of the partials' rows that belong to parameter p
// (rows order[offsets[p]] .. order[offsets[p + 1] - 1], in row order: a fixed order, so the same
// bits every call), each row `width` doubles with its two sums at `first`.
extern "C" __global__ void param_sums(const double* part, long long width, long long first, const long long* order,
                                      const long long* offsets, long long n_param, double* dw, double* db) {
    NG_EACH(p, n_param) {
        double a = 0.0, b = 0.0;
        for (long long e = offsets[p]; e < offsets[p + 1]; ++e) {
            const long long row = order[e] * width + first;
            a += part[row];
            b += part[row + 1];
        }
        dw[p] = a;
        db[p] = b;
    }
}

NG_EVAL_KSTATS(eval_kstats_f32_f32, float, float)
NG_EVAL_KSTATS(eval_kstats_f32_f64, float, double)
NG_EVAL_KSTATS(eval_kstats_f64_f32, double, float)
NG_EVAL_KSTATS(eval_kstats_f64_f64, double, double)
"""

NAMES = ("ranks_mean_sums", "ranks_m2_sums", "ranks_moments", "ranks_grad_pack", "ranks_grad_parts",
         "running_update_f32", "running_update_f64", "param_sums", "eval_kstats_f32_f32", "eval_kstats_f32_f64",
         "eval_kstats_f64_f32", "eval_kstats_f64_f64")


def source() -> str:
    """The full CUDA source: the prelude, then the kernels."""
    return cuda_prelude() + _BODY


def grid(n: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-n // BLOCK)))


class DeviceKernels:
    """The kernels above, compiled once for a Device (CuPy or the emulator) and launched by name."""

    def __init__(self, device: Any):
        self.device = device
        self.module = device.compile(source(), list(NAMES), "device_kernels.cu")

    def launch(self, name: str, n: int, *args: Any) -> None:
        """`name` over n threads' worth of work (groups or running entries)."""
        self.device.launch(self.module, name, grid(n), (BLOCK, 1), args)

    # ---- across ranks ----
    def mean_sums(self, moments, sums, g: int) -> None:
        self.launch("ranks_mean_sums", g, moments, sums, np.int64(g))

    def m2_sums(self, moments, sums, g: int) -> None:
        self.launch("ranks_m2_sums", g, moments, sums, np.int64(g))

    def moments(self, sums, parts, g: int) -> None:
        self.launch("ranks_moments", g, sums, parts, np.int64(g))

    def grad_pack(self, totals, sums, g: int) -> None:
        self.launch("ranks_grad_pack", g, totals, sums, np.int64(g))

    def grad_parts(self, sums, moments, parts, g: int, per_count: bool) -> None:
        self.launch("ranks_grad_parts", g, sums, moments, parts, np.int64(g), np.int32(per_count))

    # ---- running statistics ----
    def running_update(self, moments, members, factor: float, running_mean, running_var) -> None:
        n_running, k = members.shape
        name = "running_update_f64" if np.dtype(running_mean.dtype) == np.float64 else "running_update_f32"
        self.launch(name, n_running, moments, members, np.int64(n_running), np.int64(k), np.float64(factor),
                    running_mean, running_var)

    # ---- parameter gradients ----
    def param_sums(self, part, width: int, first: int, order, offsets, n_param: int, dw, db) -> None:
        self.launch("param_sums", n_param, part, np.int64(width), np.int64(first), order, offsets,
                    np.int64(n_param), dw, db)

    # ---- evaluation ----
    def eval_kstats(self, running_mean, running_var, members, eps: float, kstats) -> None:
        n_running, k = members.shape
        name = f"eval_kstats_{_short(running_mean.dtype)}_{_short(kstats.dtype)}"
        self.launch(name, n_running, running_mean, running_var, members, np.int64(n_running), np.int64(k),
                    np.float64(eps), kstats)


def _short(dtype) -> str:
    return "f64" if np.dtype(dtype) == np.float64 else "f32"
