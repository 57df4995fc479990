// normgen CUDA prelude: the first thing in every generated CUDA source.
//
// On the GPU (nvcc, NVRTC through CuPy) it brings in the half-precision headers and defines
// normgen's shared-memory macros as plain __shared__ arrays. With NORMGEN_EMULATE defined
// (g++, normgen.testing.cuda_emu) it includes the CPU emulator instead, where the same
// macros declare instrumented, per-block arrays. Templates may use what SUBSET.md lists.
#ifndef NORMGEN_PRELUDE_CUH
#define NORMGEN_PRELUDE_CUH

#ifdef NORMGEN_EMULATE
#include "ngemu.h"
#else
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define NG_EMULATED 0
// One shared array per block; `count` must be a constant expression.
#define NG_SHARED(type, name, count) __shared__ type name[count]
// The type of a shared array handed to a __device__ helper.
#define NG_SHARED_PTR(type) type*
#endif

#endif  // NORMGEN_PRELUDE_CUH
