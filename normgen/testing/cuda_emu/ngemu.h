// ngemu.h — lets a CUDA C source that nvcc compiles be compiled by g++ (C++17) and run on
// the CPU, for testing. Included (through prelude.cuh) only when NORMGEN_EMULATE is defined.
//
// The emulated GPU: every block runs its threads as cooperative fibers on one OS thread
// (see ngemu_rt.cpp). Everything a kernel can observe about that — thread and block indices,
// barriers, warp shuffles, shared memory, atomics — goes through the functions below, which
// call into the runtime. The runtime checks what the CUDA programming model only promises
// when the kernel is correct: every thread of a block reaches the same barrier, the lanes
// named in a shuffle's mask execute it together, shared memory accesses are in bounds and
// ordered by a barrier when two threads touch the same element.
//
// Only what SUBSET.md lists is supported; anything else is a compile error here (never a
// silent difference), so a template that compiles under both nvcc and this header behaves
// the same, up to floating-point details (SUBSET.md, "Differences").
#ifndef NGEMU_H
#define NGEMU_H

#ifndef NORMGEN_EMULATE
#error "ngemu.h is the CPU emulation of CUDA: include prelude.cuh, and define NORMGEN_EMULATE to emulate"
#endif

#include <atomic>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define NG_EMULATED 1

// ---------------------------------------------------------------------------------------
// Qualifiers. nvcc's own definitions (host_defines.h) are mirrored where they change what
// compiles: __forceinline__ includes `inline`, so `inline __forceinline__` fails in both.
// (__noinline__ is left out: libstdc++ spells its own attribute __attribute__((__noinline__)).)
#define __global__
#define __device__
#define __host__
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
// A plain `__shared__ T a[N]` would be one array per *process*, shared by every emulated block
// and invisible to the race detector: refuse it at compile time.
#define __shared__ \
  _Pragma("GCC error \"the CUDA emulator does not support __shared__: declare shared arrays with NG_SHARED(type, name, count)\"")

// ---------------------------------------------------------------------------------------
// The C interface between the Python driver and a compiled module (mirrored in driver.py).
extern "C" {
struct NgLaunchConfig {
  uint32_t grid[3];
  uint32_t block[3];
  int32_t order;         // 0 forward, 1 reverse, 2 random (blocks and threads between barriers)
  uint32_t workers;      // OS threads that run blocks (>= 1)
  uint64_t seed;         // for order == 2
  double timeout_s;      // wall-clock limit of the whole launch
  int32_t check_uninit;  // report reads of shared memory that no thread of the block wrote
  uint32_t stack_kib;    // stack of each emulated thread
};

struct NgErrorOut {
  int32_t kind;          // NgErrorKind
  int32_t has_block;
  uint32_t block[3];
  char message[8192];
};
}

namespace ngemu {

enum NgErrorKind : int32_t {
  kOk = 0,
  kRace = 1,          // two unordered accesses to one shared element, one of them a write
  kBarrier = 2,       // __syncthreads not reached by every thread, or at different places
  kSharedBounds = 3,  // shared array index out of range, or too much shared memory
  kWarp = 4,          // shuffle/ballot/syncwarp whose lanes disagree or never arrive
  kTimeout = 5,       // the launch ran past its time limit
  kTrap = 6,          // assert() failed or __trap() called in device code
  kConfig = 7,        // bad launch configuration
  kUninit = 8,        // read of shared memory no thread of the block wrote
  kAbandoned = 9,     // timed out inside code the runtime cannot interrupt; the OS thread leaks
};

}  // namespace ngemu

// ---------------------------------------------------------------------------------------
// Built-in vector types: the layouts and alignments of CUDA's vector_types.h, so that
// reinterpret_cast<const float4*>(p) loads the same bytes as on the GPU.
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4 layout");
static_assert(sizeof(double2) == 16 && alignof(double2) == 16, "double2 layout");
static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "float2 layout");

inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// ---------------------------------------------------------------------------------------
// Half precision (cuda_fp16.h / cuda_bf16.h subset). Conversions are bit-exact with the GPU:
// round to nearest even from the exact input, overflow to infinity, subnormals kept, and
// every NaN becomes the canonical NaN 0x7FFF (as cvt.rn.f16.f32 and cuda_fp16.hpp do).
namespace ngemu {
namespace fp {

template <class To, class From>
inline To bits_as(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
  To r;
  std::memcpy(&r, &v, sizeof(To));
  return r;
}

// Rounds `d` to a binary format with E exponent bits and M fraction bits (half: 5/10,
// bfloat16: 8/7). Works from the double's bits, so a float input (exact in double) is
// rounded once: no double rounding, whatever the input type.
template <int E, int M>
inline uint16_t round_double(double d) {
  const uint64_t b = bits_as<uint64_t>(d);
  const uint16_t sign = static_cast<uint16_t>((b >> 63) << (E + M));
  const uint64_t a = b & 0x7fffffffffffffffull;
  const uint32_t inf = ((1u << E) - 1u) << M;
  if (a > 0x7ff0000000000000ull) return 0x7fff;                      // NaN: canonical, sign dropped
  if (a == 0x7ff0000000000000ull) return static_cast<uint16_t>(sign | inf);
  const int bias = (1 << (E - 1)) - 1;
  int exp = static_cast<int>(a >> 52) - 1023;
  uint64_t mant = a & ((1ull << 52) - 1);
  if (a >> 52) mant |= 1ull << 52; else exp = -1022;                 // double subnormal
  int shift = 52 - M;                                                // keep M fraction bits
  if (exp < 1 - bias) shift += (1 - bias) - exp;                     // target subnormal
  if (shift > 53) return sign;                                       // below half the tiniest step
  uint64_t q = mant >> shift;
  const uint64_t rem = mant & ((1ull << shift) - 1);
  const uint64_t halfway = 1ull << (shift - 1);
  if (rem > halfway || (rem == halfway && (q & 1))) ++q;             // ties to even
  // A normal result carries the implicit bit in q, so adding (exp + bias - 1) << M yields the
  // right exponent field, and a mantissa that rounds up carries into the exponent by itself.
  uint64_t field = exp >= 1 - bias ? (static_cast<uint64_t>(exp + bias - 1) << M) + q : q;
  if (field >= inf) field = inf;
  return static_cast<uint16_t>(sign | field);
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_as<float>(m ? 0x7fffffffu : (sign | 0x7f800000u));
  if (e == 0) {
    if (m == 0) return bits_as<float>(sign);
    e = 1;
    while (!(m & 0x400u)) { m <<= 1; --e; }                          // normalize the subnormal
    m &= 0x3ffu;
  }
  return bits_as<float>(sign | ((e + 127 - 15) << 23) | (m << 13));
}

inline float bf16_to_float(uint16_t h) { return bits_as<float>(static_cast<uint32_t>(h) << 16); }

}  // namespace fp
}  // namespace ngemu

namespace ngemu {
namespace fp {
// A 16-bit float with E exponent bits and M fraction bits: __half is <5, 10>, __nv_bfloat16
// <8, 7>. As in CUDA, it converts implicitly from and to float, and keeps its bits in __x.
template <int E, int M>
struct __attribute__((aligned(2))) Float16 {
  unsigned short __x;
  Float16() = default;
  Float16(float f) : __x(round_double<E, M>(f)) {}
  Float16(double d) : __x(round_double<E, M>(d)) {}
  operator float() const { return E == 5 ? half_to_float(__x) : bf16_to_float(__x); }
};
template <class H>
struct __attribute__((aligned(4))) Pair16 {
  H x, y;
};
}  // namespace fp
}  // namespace ngemu
using __half = ngemu::fp::Float16<5, 10>;
using __nv_bfloat16 = ngemu::fp::Float16<8, 7>;
using __half2 = ngemu::fp::Pair16<__half>;
using __nv_bfloat162 = ngemu::fp::Pair16<__nv_bfloat16>;

namespace ngemu {
namespace fp {
inline __half make_half(uint16_t b) { __half h; h.__x = b; return h; }
inline __nv_bfloat16 make_bf16(uint16_t b) { __nv_bfloat16 h; h.__x = b; return h; }
}  // namespace fp
}  // namespace ngemu

inline float __half2float(__half h) { return ngemu::fp::half_to_float(h.__x); }
inline __half __float2half(float f) { return ngemu::fp::make_half(ngemu::fp::round_double<5, 10>(f)); }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline __half __double2half(double d) { return ngemu::fp::make_half(ngemu::fp::round_double<5, 10>(d)); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short b) { return ngemu::fp::make_half(b); }
inline __half2 __halves2half2(__half lo, __half hi) { return __half2{lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half(lo), __float2half(hi)}; }
inline __half2 __float2half2_rn(float f) { return __half2{__float2half(f), __float2half(f)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }

inline float __bfloat162float(__nv_bfloat16 h) { return ngemu::fp::bf16_to_float(h.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return ngemu::fp::make_bf16(ngemu::fp::round_double<8, 7>(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return ngemu::fp::make_bf16(ngemu::fp::round_double<8, 7>(d)); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return ngemu::fp::make_bf16(b); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return __nv_bfloat162{lo, hi}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16(lo), __float2bfloat16(hi)};
}
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __floats2bfloat162_rn(f, f); }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }

// Arithmetic on __half / __nv_bfloat16 rounds once, like the hardware: the exact result of
// +, -, *, / on two 16-bit floats is computed in double (exact for +, -, *; correctly
// rounded for /, which double rounding cannot spoil at these widths) and rounded to 16 bits.
#define NGEMU_HALF_ARITH(T, TOF)                                                         \
  inline T operator+(const T& a, const T& b) { return T(double(TOF(a)) + double(TOF(b))); } \
  inline T operator-(const T& a, const T& b) { return T(double(TOF(a)) - double(TOF(b))); } \
  inline T operator*(const T& a, const T& b) { return T(double(TOF(a)) * double(TOF(b))); } \
  inline T operator/(const T& a, const T& b) { return T(double(TOF(a)) / double(TOF(b))); } \
  inline T operator-(const T& a) { T r = a; r.__x ^= 0x8000u; return r; }                 \
  inline T& operator+=(T& a, const T& b) { return a = a + b; }                            \
  inline T& operator-=(T& a, const T& b) { return a = a - b; }                            \
  inline T& operator*=(T& a, const T& b) { return a = a * b; }                            \
  inline T& operator/=(T& a, const T& b) { return a = a / b; }                            \
  inline bool operator==(const T& a, const T& b) { return TOF(a) == TOF(b); }             \
  inline bool operator!=(const T& a, const T& b) { return TOF(a) != TOF(b); }             \
  inline bool operator<(const T& a, const T& b) { return TOF(a) < TOF(b); }               \
  inline bool operator<=(const T& a, const T& b) { return TOF(a) <= TOF(b); }             \
  inline bool operator>(const T& a, const T& b) { return TOF(a) > TOF(b); }               \
  inline bool operator>=(const T& a, const T& b) { return TOF(a) >= TOF(b); }
NGEMU_HALF_ARITH(__half, __half2float)
NGEMU_HALF_ARITH(__nv_bfloat16, __bfloat162float)
#undef NGEMU_HALF_ARITH

// ---------------------------------------------------------------------------------------
// Hooks into the runtime (ngemu_rt.cpp). `file`/`line` are the kernel's source location,
// captured by __builtin_FILE()/__builtin_LINE() default arguments at each call site, so
// error messages point at the kernel's code, not at this header.
namespace ngemu {

struct SharedArrayInfo;  // one NG_SHARED array of one block (runtime-owned)

namespace detail {

// What an emulated thread can see about itself. The runtime points ngemu_tls_view at the
// running fiber's view before switching to it; `abort` is raised when the launch must stop
// (time limit, or an error in another block), and every hook polls it.
struct ThreadView {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  const std::atomic<bool>* abort;
  const char* file;  // the last place the thread was seen at (for time-out reports)
  int line;
};
// Not thread_local: __thread has no initialization wrapper, so reading it is one TLS load.
extern __thread ThreadView* ngemu_tls_view;

[[noreturn]] void poll_abort_slow();
[[noreturn]] void trap(const char* what, const char* file, int line);

inline ThreadView* view(const char* file, int line) {
  ThreadView* v = ngemu_tls_view;
  v->file = file;
  v->line = line;
  if (__builtin_expect(v->abort->load(std::memory_order_relaxed), false)) poll_abort_slow();
  return v;
}

// Barriers and warp-level operations: park the calling fiber until its partners arrive.
enum BarrierKind : int { kBarPlain = 0, kBarCount = 1, kBarAnd = 2, kBarOr = 3 };
int barrier(int kind, int pred, const char* file, int line);

enum WarpOp : int {
  kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3,
  kBallot = 4, kSyncWarp = 5, kActiveMask = 6, kAll = 7, kAny = 8,
};
uint64_t warp_op(int op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);

template <class T>
inline T shfl(int op, unsigned mask, T v, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffled types are at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_op(op, mask, bits, arg, width, file, line);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

// Shared memory: `declare_shared` returns the block's array for one NG_SHARED site (created
// on the first thread's visit, then shared); `shared_access` checks bounds, runs the race
// detector and returns the element's address. kind: 0 read, 1 write, 2 atomic.
enum AccessKind : int { kRead = 0, kWrite = 1, kAtomic = 2 };
SharedArrayInfo* declare_shared(const char* name, const char* type_name, size_t elem_size, size_t elem_align,
                                long long count, const char* file, int line);
void* shared_access(SharedArrayInfo* a, long long index, int kind, const char* file, int line);

}  // namespace detail
}  // namespace ngemu

// ---------------------------------------------------------------------------------------
// Built-in variables. Function calls, not constants: like nvcc, `float a[warpSize]` or a
// switch on blockDim.x is not a constant expression.
namespace ngemu {
namespace detail {
inline const uint3& thread_idx(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return view(f, l)->thread_idx; }
inline const uint3& block_idx(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return view(f, l)->block_idx; }
inline const dim3& block_dim(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return view(f, l)->block_dim; }
inline const dim3& grid_dim(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return view(f, l)->grid_dim; }
inline int warp_size() { return 32; }
}  // namespace detail
}  // namespace ngemu
#define threadIdx (::ngemu::detail::thread_idx())
#define blockIdx (::ngemu::detail::block_idx())
#define blockDim (::ngemu::detail::block_dim())
#define gridDim (::ngemu::detail::grid_dim())
#define warpSize (::ngemu::detail::warp_size())

// ---------------------------------------------------------------------------------------
// Synchronization.
inline void __syncthreads(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  ngemu::detail::barrier(ngemu::detail::kBarPlain, 0, f, l);
}
inline int __syncthreads_count(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ngemu::detail::barrier(ngemu::detail::kBarCount, p != 0, f, l);
}
inline int __syncthreads_and(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ngemu::detail::barrier(ngemu::detail::kBarAnd, p != 0, f, l);
}
inline int __syncthreads_or(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ngemu::detail::barrier(ngemu::detail::kBarOr, p != 0, f, l);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  ngemu::detail::warp_op(ngemu::detail::kSyncWarp, mask, 0, 0, 32, f, l);
}
inline unsigned __ballot_sync(unsigned mask, int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return static_cast<unsigned>(ngemu::detail::warp_op(ngemu::detail::kBallot, mask, p != 0, 0, 32, f, l));
}
inline int __all_sync(unsigned mask, int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return static_cast<int>(ngemu::detail::warp_op(ngemu::detail::kAll, mask, p != 0, 0, 32, f, l));
}
inline int __any_sync(unsigned mask, int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return static_cast<int>(ngemu::detail::warp_op(ngemu::detail::kAny, mask, p != 0, 0, 32, f, l));
}
// The emulator has no SIMT convergence to report, so __activemask() answers with the lanes of
// the warp that are at this same __activemask() call when none of them can run further: the
// lanes that a divergent branch sent here, in the emulator's model.
inline unsigned __activemask(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return static_cast<unsigned>(ngemu::detail::warp_op(ngemu::detail::kActiveMask, 0, 0, 0, 32, f, l));
}
inline void __threadfence(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  ngemu::detail::view(f, l);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// One overload per type, as in CUDA, so that arguments convert the way nvcc converts them.
#define NGEMU_SHFL(T)                                                                                  \
  inline T __shfl_sync(unsigned m, T v, int src, int w = 32, const char* f = __builtin_FILE(),         \
                       int l = __builtin_LINE()) {                                                     \
    return ngemu::detail::shfl<T>(ngemu::detail::kShflIdx, m, v, src, w, f, l);                       \
  }                                                                                                    \
  inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32, const char* f = __builtin_FILE(),   \
                          int l = __builtin_LINE()) {                                                  \
    return ngemu::detail::shfl<T>(ngemu::detail::kShflUp, m, v, static_cast<int>(d), w, f, l);         \
  }                                                                                                    \
  inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32, const char* f = __builtin_FILE(), \
                            int l = __builtin_LINE()) {                                                \
    return ngemu::detail::shfl<T>(ngemu::detail::kShflDown, m, v, static_cast<int>(d), w, f, l);       \
  }                                                                                                    \
  inline T __shfl_xor_sync(unsigned m, T v, int lm, int w = 32, const char* f = __builtin_FILE(),      \
                           int l = __builtin_LINE()) {                                                 \
    return ngemu::detail::shfl<T>(ngemu::detail::kShflXor, m, v, lm, w, f, l);                         \
  }
NGEMU_SHFL(int)
NGEMU_SHFL(unsigned int)
NGEMU_SHFL(long)
NGEMU_SHFL(unsigned long)
NGEMU_SHFL(long long)
NGEMU_SHFL(unsigned long long)
NGEMU_SHFL(float)
NGEMU_SHFL(double)
NGEMU_SHFL(__half)
NGEMU_SHFL(__half2)
NGEMU_SHFL(__nv_bfloat16)
NGEMU_SHFL(__nv_bfloat162)
#undef NGEMU_SHFL

// ---------------------------------------------------------------------------------------
// Shared memory. NG_SHARED(float, buf, 256) declares `buf`, an instrumented handle to the
// block's array. `buf[i]` is a SharedRef: reading it (conversion to T) and assigning to it
// are recorded, with the source line of the `buf[i]` expression, for the race detector.
namespace ngemu {

template <class T>
class SharedPtr;

// An index that remembers where it was written: the implicit conversion from an integer at
// `buf[i]` evaluates the default arguments at the caller's line.
struct SharedIndex {
  long long value;
  const char* file;
  int line;
  template <class I, std::enable_if_t<std::is_integral<I>::value || std::is_enum<I>::value, int> = 0>
  SharedIndex(I i, const char* f = __builtin_FILE(), int l = __builtin_LINE())
      : value(static_cast<long long>(i)), file(f), line(l) {}
};

template <class T>
class SharedRef {
 public:
  SharedRef(SharedArrayInfo* a, long long i, const char* f, int l) : a_(a), i_(i), file_(f), line_(l) {}

  operator T() const { return *static_cast<const T*>(detail::shared_access(a_, i_, detail::kRead, file_, line_)); }
  // Assignment writes the element (a copy-assignment from another SharedRef reads that one).
  const SharedRef& operator=(const T& v) const {
    *static_cast<std::remove_const_t<T>*>(detail::shared_access(a_, i_, detail::kWrite, file_, line_)) = v;
    return *this;
  }
  const SharedRef& operator=(const SharedRef& o) const { return *this = static_cast<T>(o); }
  template <class U> const SharedRef& operator+=(const U& v) const { T t = *this; t += v; return *this = t; }
  template <class U> const SharedRef& operator-=(const U& v) const { T t = *this; t -= v; return *this = t; }
  template <class U> const SharedRef& operator*=(const U& v) const { T t = *this; t *= v; return *this = t; }
  template <class U> const SharedRef& operator/=(const U& v) const { T t = *this; t /= v; return *this = t; }
  template <class U> const SharedRef& operator%=(const U& v) const { T t = *this; t %= v; return *this = t; }
  template <class U> const SharedRef& operator&=(const U& v) const { T t = *this; t &= v; return *this = t; }
  template <class U> const SharedRef& operator|=(const U& v) const { T t = *this; t |= v; return *this = t; }
  template <class U> const SharedRef& operator^=(const U& v) const { T t = *this; t ^= v; return *this = t; }
  const SharedRef& operator++() const { T t = *this; ++t; return *this = t; }
  const SharedRef& operator--() const { T t = *this; --t; return *this = t; }
  T operator++(int) const { T t = *this; T old = t; ++t; *this = t; return old; }
  T operator--(int) const { T t = *this; T old = t; --t; *this = t; return old; }
  SharedPtr<T> operator&() const;

 private:
  SharedArrayInfo* a_;
  long long i_;
  const char* file_;
  int line_;
};

// A pointer into a shared array: what `buf`, `buf + k` and `&buf[i]` are in the emulator.
// Pass it to __device__ helpers as NG_SHARED_PTR(T) (plain T* on the GPU).
template <class T>
class SharedPtr {
 public:
  SharedPtr() : a_(nullptr), off_(0) {}
  SharedPtr(SharedArrayInfo* a, long long off) : a_(a), off_(off) {}
  template <class U, std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value, int> = 0>
  SharedPtr(const SharedPtr<U>& p) : a_(p.info()), off_(p.offset()) {}

  SharedRef<T> operator[](SharedIndex i) const { return SharedRef<T>(a_, off_ + i.value, i.file, i.line); }
  SharedRef<T> operator*() const { return SharedRef<T>(a_, off_, nullptr, 0); }
  SharedPtr operator+(long long k) const { return SharedPtr(a_, off_ + k); }
  SharedPtr operator-(long long k) const { return SharedPtr(a_, off_ - k); }
  long long operator-(const SharedPtr& o) const { return off_ - o.off_; }
  SharedPtr& operator+=(long long k) { off_ += k; return *this; }
  SharedPtr& operator-=(long long k) { off_ -= k; return *this; }
  SharedPtr& operator++() { ++off_; return *this; }
  SharedPtr& operator--() { --off_; return *this; }
  bool operator==(const SharedPtr& o) const { return a_ == o.a_ && off_ == o.off_; }
  bool operator!=(const SharedPtr& o) const { return !(*this == o); }
  bool operator<(const SharedPtr& o) const { return off_ < o.off_; }

  SharedArrayInfo* info() const { return a_; }
  long long offset() const { return off_; }
  // For atomics: checked, recorded access to the element this points at.
  std::remove_const_t<T>* atomic_element(const char* f, int l) const {
    return static_cast<std::remove_const_t<T>*>(detail::shared_access(a_, off_, detail::kAtomic, f, l));
  }

 private:
  SharedArrayInfo* a_;
  long long off_;
};

template <class T>
inline SharedPtr<T> operator+(long long k, const SharedPtr<T>& p) { return p + k; }
template <class T>
SharedPtr<T> SharedRef<T>::operator&() const { return SharedPtr<T>(a_, i_); }

namespace detail {
template <class T, long long Count>
inline SharedPtr<T> declare(const char* name, const char* type_name, const char* file, int line) {
  static_assert(Count > 0, "NG_SHARED: the count must be positive");
  static_assert(std::is_trivially_copyable<T>::value && std::is_trivially_default_constructible<T>::value,
                "NG_SHARED: shared memory holds plain data (no constructors), as on the GPU");
  return SharedPtr<T>(declare_shared(name, type_name, sizeof(T), alignof(T), Count, file, line), 0);
}
}  // namespace detail
}  // namespace ngemu

// `count` is a template argument: like nvcc, it must be a constant expression.
#define NG_SHARED(type, name, count) \
  ::ngemu::SharedPtr<type> name = ::ngemu::detail::declare<type, (count)>(#name, #type, __FILE__, __LINE__)
#define NG_SHARED_PTR(type) ::ngemu::SharedPtr<type>

// ---------------------------------------------------------------------------------------
// Atomics. Global memory: real atomics, since blocks may run on several OS threads. Shared
// memory: one OS thread runs a block, so a plain read-modify-write is atomic; it is recorded
// as an atomic access (atomics do not race with each other, but do with plain accesses).
namespace ngemu {
namespace detail {
template <class T, class F>
inline T atomic_update(T* addr, F f) {
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  static_assert(sizeof(T) == sizeof(Bits), "atomics are on 4- or 8-byte words");
  Bits* word = reinterpret_cast<Bits*>(addr);
  Bits old = __atomic_load_n(word, __ATOMIC_RELAXED);
  for (;;) {
    const T next = f(fp::bits_as<T>(old));
    if (__atomic_compare_exchange_n(word, &old, fp::bits_as<Bits>(next), true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
      return fp::bits_as<T>(old);
  }
}
template <class T, class F>
inline T shared_update(const SharedPtr<T>& p, F f, const char* file, int line) {
  T* e = p.atomic_element(file, line);
  const T old = *e;
  *e = f(old);
  return old;
}
}  // namespace detail
}  // namespace ngemu

#define NGEMU_ATOMIC(NAME, T, EXPR)                                                                 \
  inline T NAME(T* a, T v) { return ngemu::detail::atomic_update(a, [&](T o) -> T { (void)o; return EXPR; }); } \
  inline T NAME(ngemu::SharedPtr<T> a, T v, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { \
    return ngemu::detail::shared_update(a, [&](T o) -> T { (void)o; return EXPR; }, f, l);                    \
  }
NGEMU_ATOMIC(atomicAdd, int, o + v)
NGEMU_ATOMIC(atomicAdd, unsigned int, o + v)
NGEMU_ATOMIC(atomicAdd, unsigned long long, o + v)
NGEMU_ATOMIC(atomicAdd, float, o + v)
NGEMU_ATOMIC(atomicAdd, double, o + v)
NGEMU_ATOMIC(atomicSub, int, o - v)
NGEMU_ATOMIC(atomicSub, unsigned int, o - v)
NGEMU_ATOMIC(atomicExch, int, v)
NGEMU_ATOMIC(atomicExch, unsigned int, v)
NGEMU_ATOMIC(atomicExch, unsigned long long, v)
NGEMU_ATOMIC(atomicExch, float, v)
NGEMU_ATOMIC(atomicMax, int, o > v ? o : v)
NGEMU_ATOMIC(atomicMax, unsigned int, o > v ? o : v)
NGEMU_ATOMIC(atomicMax, long long, o > v ? o : v)
NGEMU_ATOMIC(atomicMax, unsigned long long, o > v ? o : v)
NGEMU_ATOMIC(atomicMin, int, o < v ? o : v)
NGEMU_ATOMIC(atomicMin, unsigned int, o < v ? o : v)
NGEMU_ATOMIC(atomicMin, long long, o < v ? o : v)
NGEMU_ATOMIC(atomicMin, unsigned long long, o < v ? o : v)
NGEMU_ATOMIC(atomicAnd, int, o & v)
NGEMU_ATOMIC(atomicAnd, unsigned int, o & v)
NGEMU_ATOMIC(atomicOr, int, o | v)
NGEMU_ATOMIC(atomicOr, unsigned int, o | v)
NGEMU_ATOMIC(atomicXor, int, o ^ v)
NGEMU_ATOMIC(atomicXor, unsigned int, o ^ v)
#undef NGEMU_ATOMIC

#define NGEMU_ATOMIC_CAS(T)                                                                          \
  inline T atomicCAS(T* a, T cmp, T v) {                                                             \
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);             \
    return cmp;                                                                                      \
  }                                                                                                  \
  inline T atomicCAS(ngemu::SharedPtr<T> a, T cmp, T v, const char* f = __builtin_FILE(),            \
                     int l = __builtin_LINE()) {                                                     \
    return ngemu::detail::shared_update(a, [&](T o) -> T { return o == cmp ? v : o; }, f, l);       \
  }
NGEMU_ATOMIC_CAS(int)
NGEMU_ATOMIC_CAS(unsigned int)
NGEMU_ATOMIC_CAS(unsigned long long)
#undef NGEMU_ATOMIC_CAS

// ---------------------------------------------------------------------------------------
// Math. The C library supplies sqrtf, expf, fmaf, fmaxf, ...; these are CUDA's additions.
// The fast intrinsics (__expf, __fdividef, rsqrtf) are approximate on the GPU and exact
// here: compare results with a tolerance of a few ulps.
using std::isfinite;
using std::isinf;
using std::isnan;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline int __float_as_int(float x) { return ngemu::fp::bits_as<int>(x); }
inline unsigned int __float_as_uint(float x) { return ngemu::fp::bits_as<unsigned int>(x); }
inline float __int_as_float(int x) { return ngemu::fp::bits_as<float>(x); }
inline float __uint_as_float(unsigned int x) { return ngemu::fp::bits_as<float>(x); }
inline long long __double_as_longlong(double x) { return ngemu::fp::bits_as<long long>(x); }
inline double __longlong_as_double(long long x) { return ngemu::fp::bits_as<double>(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }

// CUDA's overloads of min and max, mixed signedness included (math_functions.hpp).
#define NGEMU_MINMAX(R, A, B)                                  \
  inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
NGEMU_MINMAX(int, int, int)
NGEMU_MINMAX(unsigned int, unsigned int, unsigned int)
NGEMU_MINMAX(unsigned int, int, unsigned int)
NGEMU_MINMAX(unsigned int, unsigned int, int)
NGEMU_MINMAX(long, long, long)
NGEMU_MINMAX(unsigned long, unsigned long, unsigned long)
NGEMU_MINMAX(unsigned long, long, unsigned long)
NGEMU_MINMAX(unsigned long, unsigned long, long)
NGEMU_MINMAX(long long, long long, long long)
NGEMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
NGEMU_MINMAX(unsigned long long, long long, unsigned long long)
NGEMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef NGEMU_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }

// __ldg: a read-only load, for the types CUDA overloads it for.
namespace ngemu {
namespace detail {
template <class T>
struct ldg_ok : std::integral_constant<bool, std::is_arithmetic<T>::value> {};
#define NGEMU_LDG_OK(T) template <> struct ldg_ok<T> : std::true_type {};
NGEMU_LDG_OK(float2) NGEMU_LDG_OK(float4) NGEMU_LDG_OK(double2) NGEMU_LDG_OK(int2) NGEMU_LDG_OK(int4)
NGEMU_LDG_OK(uint2) NGEMU_LDG_OK(uint4) NGEMU_LDG_OK(__half) NGEMU_LDG_OK(__half2) NGEMU_LDG_OK(__nv_bfloat16)
NGEMU_LDG_OK(__nv_bfloat162)
#undef NGEMU_LDG_OK
}  // namespace detail
}  // namespace ngemu
template <class T, std::enable_if_t<ngemu::detail::ldg_ok<T>::value, int> = 0>
inline T __ldg(const T* p) { return *p; }

// Device assert() and __trap() become launch errors naming the block and thread, not an
// abort() of the Python process. glibc's and musl's assert() expand to a call of
// __assert_fail; <cassert> above has already declared it, so redefining the name as a macro
// reroutes every later expansion of assert(), also after a later #include <assert.h> (which
// redefines only the assert macro). As in CUDA, NDEBUG turns assert() off.
namespace ngemu {
namespace detail {
[[noreturn]] inline void assert_fail(const char* expr, const char* file, unsigned line) {
  trap((std::string("assertion failed: ") + expr).c_str(), file, static_cast<int>(line));
}
}  // namespace detail
}  // namespace ngemu
#define __assert_fail(expr, file, line, func) ::ngemu::detail::assert_fail(expr, file, line)
#define __trap() ::ngemu::detail::trap("__trap() called", __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------
// Launching: driver.py appends, per kernel, an extern "C" wrapper that calls
// ngemu::detail::launch(&kernel, ...). The kernel's parameter types are deduced from its
// function pointer; each parameter is copied out of CuPy-style `void** args` (args[i] points
// at the i-th argument's bytes) into a tuple that every emulated thread calls the kernel with.
namespace ngemu {
namespace detail {

struct Invoker {
  void (*call)(const void* closure);
  void (*destroy)(const void* closure);
  const void* closure;
};
// Runs a launch (ngemu_rt.cpp); takes ownership of the closure. Returns an NgErrorKind.
int run_launch(const NgLaunchConfig* cfg, const char* kernel, Invoker inv, NgErrorOut* err);

template <class... P>
struct KernelCall {
  void (*fn)(P...);
  std::tuple<std::decay_t<P>...> args;
  static void call(const void* c) {
    const KernelCall* k = static_cast<const KernelCall*>(c);
    std::apply(k->fn, k->args);
  }
  static void destroy(const void* c) { delete static_cast<const KernelCall*>(c); }
};

template <class T>
inline T load_arg(void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class... P, size_t... I>
inline int launch_impl(void (*fn)(P...), const NgLaunchConfig* cfg, void** args, const char* name, NgErrorOut* err,
                       std::index_sequence<I...>) {
  static_assert((std::is_trivially_copyable<std::decay_t<P>>::value && ...),
                "kernel parameters must be plain data (pointers, scalars, PODs)");
  using K = KernelCall<P...>;
  (void)args;
  const K* k = new K{fn, std::tuple<std::decay_t<P>...>(load_arg<std::decay_t<P>>(args[I])...)};
  return run_launch(cfg, name, Invoker{&K::call, &K::destroy, k}, err);
}

template <class... P>
inline int launch(void (*fn)(P...), const NgLaunchConfig* cfg, void** args, const char* name, NgErrorOut* err) {
  return launch_impl(fn, cfg, args, name, err, std::index_sequence_for<P...>{});
}

// The signature, for the driver to check arguments as CuPy cannot: one record per parameter,
// "kind:size:category:element_size:const:type name" joined by ';'. kind P (pointer; size and
// category of the pointee) or S (scalar). Categories: f float, i signed int, u unsigned int,
// b bool, c char (any bytes), h __half, B __nv_bfloat16, x void, o other.
template <class T> struct TypeInfo {
  static constexpr char cat = std::is_same<T, bool>::value ? 'b'
      : (std::is_same<T, char>::value || std::is_same<T, signed char>::value || std::is_same<T, unsigned char>::value) ? 'c'
      : std::is_floating_point<T>::value ? 'f'
      : std::is_integral<T>::value ? (std::is_signed<T>::value ? 'i' : 'u')
      : std::is_void<T>::value ? 'x' : 'o';
  static constexpr size_t elem = std::is_void<T>::value ? 0 : sizeof(typename std::conditional<std::is_void<T>::value, char, T>::type);
  static const char* name() { return nullptr; }
};
#define NGEMU_TYPEINFO(T, CAT, ELEM)                                  \
  template <> struct TypeInfo<T> {                                    \
    static constexpr char cat = CAT;                                  \
    static constexpr size_t elem = ELEM;                              \
    static const char* name() { return #T; }                          \
  };
NGEMU_TYPEINFO(float2, 'f', 4) NGEMU_TYPEINFO(float3, 'f', 4) NGEMU_TYPEINFO(float4, 'f', 4)
NGEMU_TYPEINFO(double2, 'f', 8) NGEMU_TYPEINFO(int2, 'i', 4) NGEMU_TYPEINFO(int4, 'i', 4)
NGEMU_TYPEINFO(uint2, 'u', 4) NGEMU_TYPEINFO(uint4, 'u', 4) NGEMU_TYPEINFO(__half, 'h', 2)
NGEMU_TYPEINFO(__half2, 'h', 2) NGEMU_TYPEINFO(__nv_bfloat16, 'B', 2) NGEMU_TYPEINFO(__nv_bfloat162, 'B', 2)
#undef NGEMU_TYPEINFO

template <class T>
inline std::string type_name() {
  using U = std::remove_cv_t<T>;
  std::string base;
  if (TypeInfo<U>::name()) base = TypeInfo<U>::name();
  else if (std::is_void<U>::value) base = "void";
  else if (std::is_same<U, bool>::value) base = "bool";
  else if (std::is_same<U, char>::value) base = "char";
  else if (std::is_floating_point<U>::value) base = sizeof(U) == 4 ? "float" : sizeof(U) == 8 ? "double" : "long double";
  else if (std::is_same<U, signed char>::value) base = "signed char";
  else if (std::is_same<U, unsigned char>::value) base = "unsigned char";
  else if (std::is_same<U, short>::value) base = "short";
  else if (std::is_same<U, unsigned short>::value) base = "unsigned short";
  else if (std::is_same<U, int>::value) base = "int";
  else if (std::is_same<U, unsigned int>::value) base = "unsigned int";
  else if (std::is_same<U, long>::value) base = "long";
  else if (std::is_same<U, unsigned long>::value) base = "unsigned long";
  else if (std::is_same<U, long long>::value) base = "long long";
  else if (std::is_same<U, unsigned long long>::value) base = "unsigned long long";
  else base = "struct(" + std::to_string(sizeof(U)) + " bytes)";
  return (std::is_const<T>::value ? "const " : "") + base;
}

template <class T>
inline void describe_param(std::string& out) {
  using D = std::decay_t<T>;
  if (!out.empty()) out += ';';
  if constexpr (std::is_pointer<D>::value) {
    using Pointee = std::remove_pointer_t<D>;
    using U = std::remove_cv_t<Pointee>;
    out += "P:" + std::to_string(std::is_void<U>::value ? 0 : sizeof(typename std::conditional<std::is_void<U>::value, char, U>::type));
    out += std::string(":") + TypeInfo<U>::cat + ":" + std::to_string(TypeInfo<U>::elem);
    out += std::string(":") + (std::is_const<Pointee>::value ? "1" : "0") + ":" + type_name<Pointee>() + "*";
  } else {
    out += "S:" + std::to_string(sizeof(D)) + std::string(":") + TypeInfo<D>::cat + ":" + std::to_string(TypeInfo<D>::elem);
    out += ":0:" + type_name<D>();
  }
}

template <class... P>
inline const char* signature(void (*)(P...)) {
  static const std::string s = [] {
    std::string r;
    (describe_param<P>(r), ...);
    return r;
  }();
  return s.c_str();
}

}  // namespace detail
}  // namespace ngemu

#endif  // NGEMU_H
