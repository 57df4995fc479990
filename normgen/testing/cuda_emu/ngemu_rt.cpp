// ngemu_rt.cpp — the runtime behind ngemu.h: runs an emulated CUDA launch on the CPU.
//
// Compiled once per cache (driver.py) and linked into every kernel module with hidden
// visibility, so each module has its own private copy: two loaded modules share nothing.
//
// Model
// -----
// * A launch runs its blocks on `workers` OS threads (default 1). A worker runs one block at a
//   time; the block's threads are fibers that the worker switches between (see Context).
// * A fiber runs until it reaches a synchronization point (__syncthreads, a warp operation) or
//   returns, then switches back to the worker's scheduler. Only when *no* fiber of the block
//   can run does the scheduler look at what they wait for: it completes warp operations whose
//   lanes have all arrived, then releases a barrier that every live thread waits at; if
//   neither is possible the block can never finish on a GPU either, and the scheduler reports
//   why (who waits where, who exited) instead of hanging.
// * Shared memory accesses go through instrumented handles (ngemu.h). Each element has a
//   shadow record of its last write and its last two readers, stamped with the barrier epoch
//   (bumped at every released __syncthreads) and the warp's __syncwarp generation. Two
//   accesses by different threads in the same epoch conflict unless a __syncwarp joined by
//   both threads came between them; a conflicting pair with a write is a data race.
// * Errors found inside a fiber are recorded on the launch and the fiber jumps straight back
//   to the scheduler (its stack is abandoned, not unwound: kernels hold no resources).
// * The caller waits for the workers with a deadline. Past it, every hook (thread index reads,
//   barriers, shuffles, shared accesses) makes its fiber stop with a time-out error; a fiber
//   that never reaches a hook (a pure arithmetic endless loop) cannot be stopped, and its
//   worker is detached and reported as abandoned.
#include "ngemu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ngemu {

namespace detail {
__thread ThreadView* ngemu_tls_view = nullptr;
}  // namespace detail

namespace {

constexpr size_t kMaxStaticShared = 48 * 1024;  // static __shared__ limit per block on every GPU
constexpr uint64_t kMaxBlocks = 1ull << 24;      // the emulator's own limit: ~16M blocks

std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char* fmt, ...) {
  va_list ap, again;
  va_start(ap, fmt);
  va_copy(again, ap);
  const int n = vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string s(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) vsnprintf(&s[0], s.size() + 1, fmt, again);
  va_end(again);
  return s;
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T>
void shuffle(std::vector<T>& v, uint64_t& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix64(rng) % i]);
}

std::string site(const char* file, int line) {
  if (!file || line <= 0) return "an unknown line";
  return strf("%s:%d", file, line);
}

bool same_site(const char* f1, int l1, const char* f2, int l2) {
  return l1 == l2 && (f1 == f2 || (f1 && f2 && std::strcmp(f1, f2) == 0));
}

const char* op_name(int op) {
  switch (op) {
    case detail::kShflIdx: return "__shfl_sync";
    case detail::kShflUp: return "__shfl_up_sync";
    case detail::kShflDown: return "__shfl_down_sync";
    case detail::kShflXor: return "__shfl_xor_sync";
    case detail::kBallot: return "__ballot_sync";
    case detail::kSyncWarp: return "__syncwarp";
    case detail::kActiveMask: return "__activemask";
    case detail::kAll: return "__all_sync";
    case detail::kAny: return "__any_sync";
  }
  return "warp operation";
}

const char* barrier_name(int kind) {
  switch (kind) {
    case detail::kBarCount: return "__syncthreads_count()";
    case detail::kBarAnd: return "__syncthreads_and()";
    case detail::kBarOr: return "__syncthreads_or()";
  }
  return "__syncthreads()";
}

const char* kind_label(int kind) {
  switch (kind) {
    case kRace: return "data race in shared memory";
    case kBarrier: return "barrier not reached by every thread";
    case kSharedBounds: return "shared memory out of bounds";
    case kWarp: return "warp operation error";
    case kTimeout: return "time limit exceeded";
    case kTrap: return "device trap";
    case kConfig: return "bad launch";
    case kUninit: return "read of uninitialized shared memory";
  }
  return "error";
}

// ---------------------------------------------------------------------------------------
// Fiber contexts. A switch happens at every barrier and warp operation of every thread, so
// its cost is most of the emulator's. On x86-64 and aarch64 a hand-written switch saves just
// the callee-saved registers (about 30 ns); elsewhere, or with -DNGEMU_UCONTEXT, ucontext's
// swapcontext does (about 0.7 us: it also saves the signal mask, a system call that takes a
// process-wide lock, so several workers would slow each other down).
#if (defined(__x86_64__) || defined(__aarch64__)) && !defined(NGEMU_UCONTEXT)

}  // namespace
}  // namespace ngemu

// ngemu_switch(save, to): pushes the callee-saved registers on the current stack, stores the
// stack pointer in *save, loads `to` as the stack pointer, pops its registers and returns
// into that fiber. Hidden, so every module keeps its own copy.
extern "C" void ngemu_switch(void** save, void* to);
#if defined(__x86_64__)
// System V: rbx, rbp, r12-r15, and the SSE and x87 control words.
asm(R"(
  .pushsection .text
  .globl ngemu_switch
  .hidden ngemu_switch
  .type ngemu_switch, @function
  .p2align 4
ngemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ngemu_switch, .-ngemu_switch
  .popsection
)");
#else
// AAPCS64: x19-x28, the frame pointer x29, the link register x30, and d8-d15.
asm(R"(
  .pushsection .text
  .globl ngemu_switch
  .hidden ngemu_switch
  .type ngemu_switch, %function
  .p2align 2
ngemu_switch:
  sub sp, sp, #160
  stp x19, x20, [sp, #0]
  stp x21, x22, [sp, #16]
  stp x23, x24, [sp, #32]
  stp x25, x26, [sp, #48]
  stp x27, x28, [sp, #64]
  stp x29, x30, [sp, #80]
  stp d8, d9, [sp, #96]
  stp d10, d11, [sp, #112]
  stp d12, d13, [sp, #128]
  stp d14, d15, [sp, #144]
  mov x2, sp
  str x2, [x0]
  mov sp, x1
  ldp x19, x20, [sp, #0]
  ldp x21, x22, [sp, #16]
  ldp x23, x24, [sp, #32]
  ldp x25, x26, [sp, #48]
  ldp x27, x28, [sp, #64]
  ldp x29, x30, [sp, #80]
  ldp d8, d9, [sp, #96]
  ldp d10, d11, [sp, #112]
  ldp d12, d13, [sp, #128]
  ldp d14, d15, [sp, #144]
  add sp, sp, #160
  ret
  .size ngemu_switch, .-ngemu_switch
  .popsection
)");
#endif

namespace ngemu {
namespace {

struct Context {
  void* sp = nullptr;
};

// A fresh fiber's stack holds the frame that ngemu_switch pops: zeroed registers and, where
// it returns to, `entry` (which must never return: there is nothing above it).
void ctx_make(Context& c, char* stack, size_t size, void (*entry)()) {
  uint64_t* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15));
#if defined(__x86_64__)
  uint64_t* frame = top - 9;  // control words, 6 registers, return address, a fake caller's slot
  std::memset(frame, 0, 9 * sizeof(uint64_t));
  frame[7] = reinterpret_cast<uint64_t>(entry);      // after `ret`, rsp = top - 8: as after a call
  const uint32_t control[2] = {0x1f80u, 0x037fu};  // default MXCSR and x87 control word
  std::memcpy(frame, control, sizeof control);
#else
  uint64_t* frame = top - 20;  // 160 bytes; after the pops sp = top, 16-byte aligned
  std::memset(frame, 0, 20 * sizeof(uint64_t));
  frame[11] = reinterpret_cast<uint64_t>(entry);  // the x30 slot: `ret` goes there
#endif
  c.sp = frame;
}
void ctx_switch(Context& from, Context& to) { ngemu_switch(&from.sp, to.sp); }
[[noreturn]] void ctx_jump(Context& to) {
  void* discarded;
  ngemu_switch(&discarded, to.sp);
  std::abort();
}

#else
}  // namespace
}  // namespace ngemu
#include <ucontext.h>
namespace ngemu {
namespace {

struct Context {
  ucontext_t uc;
};
void ctx_make(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void ctx_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
[[noreturn]] void ctx_jump(Context& to) {
  setcontext(&to.uc);
  std::abort();
}
#endif

enum class TS : uint8_t { Runnable, Barrier, Warp, Done };

struct Block;
struct Worker;
struct Launch;

// One emulated thread. `view` is what the kernel's hooks read; the rest is the scheduler's.
struct Thread {
  detail::ThreadView view;
  Context ctx;
  Block* block;
  int linear, lane, warp;
  TS state;
  // The pending barrier or warp operation (its site is view.file/view.line).
  int bar_kind, pred;
  int op, arg, width;
  unsigned mask;
  uint64_t value, result;
};

// One side of a shared-memory access, for the race detector.
struct Access {
  int32_t tid;    // linear thread index in the block, -1 for none
  uint32_t wgen;  // the thread's warp's __syncwarp generation at the access
  const char* file;
  int32_t line;
};

// Per element. Epochs are per worker and only grow, so a record left by an earlier block is
// never mistaken for one of this block's (no clearing between blocks).
struct Shadow {
  uint64_t w_epoch = 0, r_epoch = 0;
  Access w{-1, 0, nullptr, 0}, r1{-1, 0, nullptr, 0}, r2{-1, 0, nullptr, 0};
  bool w_atomic = false;
};

}  // namespace

struct SharedArrayInfo {
  std::string name, type;
  const char* file;
  int line;
  size_t elem_size;
  long long count;
  size_t bytes;
  char* data;
  std::vector<Shadow> shadow;
  ~SharedArrayInfo() { std::free(data); }
};

namespace {

struct WarpSyncLog {
  uint32_t gen = 0;             // completed __syncwarp()s of this warp in this block
  std::vector<unsigned> masks;  // masks[g - 1]: lanes that joined generation g
};

struct Launch {
  NgLaunchConfig cfg;
  std::string kernel;
  detail::Invoker inv;
  dim3 grid, block;
  uint32_t nthreads = 0;
  std::vector<uint32_t> order;  // block linear indices in the order they are handed out
  std::atomic<size_t> next{0};
  std::atomic<bool> abort{false};      // stop: an error was recorded, or the time is up
  std::atomic<bool> timed_out{false};
  std::mutex mu;
  std::condition_variable cv;
  unsigned workers_done = 0;
  bool has_error = false;
  int err_kind = kOk;
  bool err_has_block = false;
  uint3 err_block{0, 0, 0};
  std::string err_msg;

  Launch(const NgLaunchConfig& c, const char* k, detail::Invoker i) : cfg(c), kernel(k), inv(i) {}
  ~Launch() { inv.destroy(inv.closure); }

  // The first error wins; later ones (often consequences of the first) are dropped.
  void record(int kind, const Block* b, const std::string& msg);
};

// Fiber stacks: one mapping per worker, a PROT_NONE guard page below each stack so that an
// overflow faults instead of silently corrupting the neighbouring fiber.
struct Stacks {
  char* base = nullptr;
  size_t stride = 0, count = 0, mapped = 0, page = 0;
  bool ensure(size_t n, size_t size) {
    if (n <= count) return true;
    release();
    page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    stride = (size + page - 1) / page * page + page;
    mapped = stride * n;
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    base = static_cast<char*>(p);
    for (size_t i = 0; i < n; ++i) mprotect(base + i * stride, page, PROT_NONE);
    count = n;
    return true;
  }
  char* stack(size_t i) const { return base + i * stride + page; }
  size_t size() const { return stride - page; }
  void release() {
    if (base) munmap(base, mapped);
    base = nullptr;
    count = 0;
  }
  ~Stacks() { release(); }
};

struct Worker {
  Launch* L;
  Context sched;
  Stacks stacks;
  std::vector<Thread> threads;
  // NG_SHARED arrays, kept across this worker's blocks (refilled at each block's first use).
  std::vector<std::unique_ptr<SharedArrayInfo>> arrays;
  uint64_t epoch = 0;
  explicit Worker(Launch* l) : L(l) {}
  void run();
  void run_block(uint32_t linear);
};

struct Block {
  Worker* W;
  Launch* L;
  uint3 idx;
  int n;
  uint64_t start_epoch, epoch;
  bool check_uninit;
  bool failed = false;
  uint64_t rng;
  std::vector<WarpSyncLog> warps;
  std::vector<SharedArrayInfo*> arrays;  // declared by this block so far
  size_t shared_bytes = 0;
  // The first read of an element that no thread had written yet. Reported when the barrier
  // interval ends, not at once: if another thread writes the element before the next barrier,
  // the read was a race with that write (a missing __syncthreads), which is the better report.
  std::string uninit_msg;

  Thread& t(int i) const { return W->threads[static_cast<size_t>(i)]; }
  unsigned lanes_present(int warp) const {
    const int k = std::min(32, n - 32 * warp);
    return k >= 32 ? 0xffffffffu : ((1u << k) - 1u);
  }
  std::string thread_name(int i) const {
    const uint3& x = t(i).view.thread_idx;
    if (L->block.y == 1 && L->block.z == 1) return strf("thread %d", i);
    return strf("thread (%u,%u,%u)", x.x, x.y, x.z);
  }
  std::string lane_name(int i) const { return strf("lane %d (%s)", i & 31, thread_name(i).c_str()); }
  // "threads 0..15, 32..47" for a set of linear thread indices (sorted).
  std::string thread_set(const std::vector<int>& ids) const {
    std::string s = ids.size() == 1 ? "thread " : "threads ";
    size_t runs = 0;
    for (size_t i = 0; i < ids.size();) {
      size_t j = i;
      while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
      if (runs++) s += ", ";
      if (runs > 6) { s += "..."; break; }
      s += i == j ? strf("%d", ids[i]) : strf("%d..%d", ids[i], ids[j]);
      i = j + 1;
    }
    if (L->block.y != 1 || L->block.z != 1) s += " (linear index x + y*blockDim.x + z*blockDim.x*blockDim.y)";
    return s;
  }
  void fail(int kind, const std::string& msg) {
    L->record(kind, this, msg);
    failed = true;
  }
};

void Launch::record(int kind, const Block* b, const std::string& msg) {
  std::lock_guard<std::mutex> lk(mu);
  if (!has_error) {
    has_error = true;
    err_kind = kind;
    err_has_block = b != nullptr;
    std::string where;
    if (b) {
      err_block = b->idx;
      where = strf(" in block (%u,%u,%u)", b->idx.x, b->idx.y, b->idx.z);
    }
    err_msg = strf("emulated kernel '%s' failed%s (grid (%u,%u,%u), block (%u,%u,%u)): %s: ", kernel.c_str(),
                   where.c_str(), grid.x, grid.y, grid.z, block.x, block.y, block.z, kind_label(kind)) + msg;
  }
  abort.store(true);
}

__thread Thread* tls_thread = nullptr;

Thread* current() { return tls_thread; }

// Leaves the running fiber for good: back to the scheduler, which sees block->failed.
[[noreturn]] void leave_fiber(Block* b) {
  b->failed = true;
  ctx_jump(b->W->sched);
}

[[noreturn]] void fiber_fail(int kind, const std::string& msg) {
  Block* b = current()->block;
  b->L->record(kind, b, msg);
  leave_fiber(b);
}

void yield(Thread* t) { ctx_switch(t->ctx, t->block->W->sched); }

void fiber_entry() {
  Thread* t = tls_thread;
  Launch* L = t->block->L;
  L->inv.call(L->inv.closure);
  t->state = TS::Done;
  ctx_jump(t->block->W->sched);  // a fiber's entry has no caller to return to
}

std::string timeout_message(const Block* b, const Thread* t) {
  return strf("the launch ran past its time limit of %g s; %s was at %s. An endless loop, or a thread "
              "spinning on a value that another block (or a thread waiting at a barrier) would write: the "
              "emulator runs blocks one after another, so inter-block waits never finish",
              b->L->cfg.timeout_s, b->thread_name(t->linear).c_str(), site(t->view.file, t->view.line).c_str());
}

// ---------------------------------------------------------------------------------------
// Race detection.

// True when a __syncwarp() that both threads joined completed after `a` accessed the element:
// then `a`'s access happens before the current one of thread `b`. Threads of different warps
// are only ordered by barriers, which the epoch comparison already covers.
bool ordered(const Block* blk, const Access& a, int b) {
  if (a.tid == b) return true;
  if ((a.tid >> 5) != (b >> 5)) return false;
  const WarpSyncLog& log = blk->warps[static_cast<size_t>(b >> 5)];
  const unsigned both = (1u << (a.tid & 31)) | (1u << (b & 31));
  for (uint32_t g = log.gen; g > a.wgen; --g)
    if ((log.masks[g - 1] & both) == both) return true;
  return false;
}

[[noreturn]] void report_race(const Block* b, const SharedArrayInfo* a, long long i, const char* what,
                              const Access& first, const char* first_kind, const Access& second,
                              const char* second_kind) {
  std::string msg = strf("%s on '%s' (%s[%lld], declared at %s), element %lld\n", what, a->name.c_str(),
                         a->type.c_str(), a->count, site(a->file, a->line).c_str(), i);
  msg += strf("  %-6s by %s at %s\n", first_kind, b->thread_name(first.tid).c_str(), site(first.file, first.line).c_str());
  msg += strf("  %-6s by %s at %s\n", second_kind, b->thread_name(second.tid).c_str(),
              site(second.file, second.line).c_str());
  msg += "  no __syncthreads() separates them";
  if ((first.tid >> 5) == (second.tid >> 5)) msg += " (nor a __syncwarp() that both threads join: they are in the same warp)";
  msg += ": add one between the two accesses";
  fiber_fail(kRace, msg);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Hooks called by kernel code (declared in ngemu.h). They run inside a fiber.
namespace detail {

void poll_abort_slow() {
  Thread* t = current();
  Block* b = t->block;
  if (b->L->timed_out.load()) fiber_fail(kTimeout, timeout_message(b, t));
  leave_fiber(b);  // another block failed: stop quietly, its error is the one reported
}

void trap(const char* what, const char* file, int line) {
  Thread* t = current();
  fiber_fail(kTrap, strf("%s, in %s at %s", what, t->block->thread_name(t->linear).c_str(), site(file, line).c_str()));
}

int barrier(int kind, int pred, const char* file, int line) {
  view(file, line);
  Thread* t = current();
  t->state = TS::Barrier;
  t->bar_kind = kind;
  t->pred = pred;
  yield(t);
  return static_cast<int>(t->result);
}

uint64_t warp_op(int op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  view(file, line);
  Thread* t = current();
  Block* b = t->block;
  if (op <= kShflXor && (width < 1 || width > 32 || (width & (width - 1)) != 0))
    fiber_fail(kWarp, strf("%s at %s by %s: width %d is not a power of two from 1 to 32", op_name(op),
                           site(file, line).c_str(), b->thread_name(t->linear).c_str(), width));
  if (op != kActiveMask) {
    if (!((mask >> t->lane) & 1u))
      fiber_fail(kWarp, strf("%s at %s: %s calls it with mask 0x%08x, which does not include the caller's own lane",
                             op_name(op), site(file, line).c_str(), b->lane_name(t->linear).c_str(), mask));
    const unsigned present = b->lanes_present(t->warp);
    if (mask & ~present)
      fiber_fail(kWarp, strf("%s at %s: mask 0x%08x names lanes that do not exist: warp %d of this %d-thread block "
                             "has lanes 0x%08x only, so the named lanes can never arrive",
                             op_name(op), site(file, line).c_str(), mask, t->warp, b->n, present));
  }
  t->op = op;
  t->mask = mask;
  t->value = value;
  t->arg = arg;
  t->width = width;
  t->state = TS::Warp;
  yield(t);
  return t->result;
}

SharedArrayInfo* declare_shared(const char* name, const char* type_name, size_t elem_size, size_t elem_align,
                                long long count, const char* file, int line) {
  view(file, line);
  Block* b = current()->block;
  // One array per site, name and shape: two template instances of one NG_SHARED line with
  // different counts are different arrays, as on the GPU.
  auto matches = [&](const SharedArrayInfo* a) {
    return a->count == count && a->elem_size == elem_size && a->name == name && same_site(a->file, a->line, file, line);
  };
  for (SharedArrayInfo* a : b->arrays)
    if (matches(a)) return a;
  SharedArrayInfo* a = nullptr;
  for (auto& c : b->W->arrays)
    if (matches(c.get())) a = c.get();
  if (!a) {
    auto made = std::make_unique<SharedArrayInfo>();
    made->name = name;
    made->type = type_name;
    made->file = file;
    made->line = line;
    made->elem_size = elem_size;
    made->count = count;
    made->bytes = elem_size * static_cast<size_t>(count);
    const size_t align = std::max<size_t>(elem_align, 16);
    made->data = static_cast<char*>(std::aligned_alloc(align, (made->bytes + align - 1) / align * align));
    made->shadow.resize(static_cast<size_t>(count));
    a = made.get();
    b->W->arrays.push_back(std::move(made));
  }
  // Shared memory starts undefined in every block: fill it with a loud pattern (NaN as float,
  // double or half; INT_MAX-like as integers) so that a missed initialization shows.
  static const unsigned char pattern[4] = {0xff, 0xff, 0xff, 0x7f};
  for (size_t i = 0; i < a->bytes; ++i) a->data[i] = static_cast<char>(pattern[i & 3]);
  b->arrays.push_back(a);
  b->shared_bytes += (a->bytes + 15) / 16 * 16;
  if (b->shared_bytes > kMaxStaticShared) {
    std::string list;
    for (const SharedArrayInfo* s : b->arrays) list += strf("%s'%s' %zu B", list.empty() ? "" : ", ", s->name.c_str(), s->bytes);
    fiber_fail(kSharedBounds, strf("the block's NG_SHARED arrays need %zu bytes (%s), more than the %zu bytes of "
                                   "static shared memory a block may have (nvcc rejects this too)",
                                   b->shared_bytes, list.c_str(), kMaxStaticShared));
  }
  return a;
}

void* shared_access(SharedArrayInfo* a, long long i, int kind, const char* file, int line) {
  view(file, line);
  Thread* t = current();
  Block* b = t->block;
  const char* verb = kind == kRead ? "read" : kind == kWrite ? "write" : "atomic";
  if (i < 0 || i >= a->count)
    fiber_fail(kSharedBounds, strf("%s of '%s' (%s[%lld], declared at %s) at index %lld by %s at %s; valid indices are "
                                   "0..%lld", verb, a->name.c_str(), a->type.c_str(), a->count,
                                   site(a->file, a->line).c_str(), i, b->thread_name(t->linear).c_str(),
                                   site(file, line).c_str(), a->count - 1));
  Shadow& s = a->shadow[static_cast<size_t>(i)];
  const int me = t->linear;
  const uint64_t ep = b->epoch;
  const Access now{me, b->warps[static_cast<size_t>(t->warp)].gen, file, line};
  if (kind != kWrite && b->check_uninit && s.w_epoch < b->start_epoch && b->uninit_msg.empty())
    b->uninit_msg = strf("%s of '%s' (%s[%lld], declared at %s) element %lld by %s at %s, but no thread of this "
                             "block has written that element (shared memory is undefined at the start of every block)",
                             verb, a->name.c_str(), a->type.c_str(), a->count, site(a->file, a->line).c_str(), i,
                             b->thread_name(me).c_str(), site(file, line).c_str());
  const bool w_conflict = s.w_epoch == ep && s.w.tid != me && !ordered(b, s.w, me);
  if (kind == kRead) {
    if (w_conflict) report_race(b, a, i, "read-after-write", s.w, s.w_atomic ? "atomic" : "write", now, "read");
    if (s.r_epoch != ep) {
      s.r_epoch = ep;
      s.r1 = now;
      s.r2.tid = -1;
    } else if (s.r1.tid == me) {
      s.r1 = now;
    } else {
      s.r2 = now;  // the most recent reader other than the first one
    }
  } else {
    if (w_conflict && !(kind == kAtomic && s.w_atomic))
      report_race(b, a, i, kind == kAtomic ? "atomic-after-write" : "write-after-write", s.w,
                  s.w_atomic ? "atomic" : "write", now, verb);
    if (s.r_epoch == ep) {
      for (const Access* r : {&s.r1, &s.r2})
        if (r->tid >= 0 && r->tid != me && !ordered(b, *r, me))
          report_race(b, a, i, "write-after-read", *r, "read", now, verb);
    }
    s.w_epoch = ep;
    s.w = now;
    s.w_atomic = kind == kAtomic;
  }
  return a->data + static_cast<size_t>(i) * a->elem_size;
}

}  // namespace detail

namespace {

// ---------------------------------------------------------------------------------------
// The scheduler's side: completing warp operations and barriers when nothing can run.

// Lanes that wait at one warp operation complete it together when they agree on everything
// that CUDA requires them to agree on. __syncwarp may be called from different places (Volta+
// semantics); the data-exchanging operations must be the same call.
bool same_group(const Thread& a, const Thread& b) {
  if (b.state != TS::Warp || b.op != a.op || b.mask != a.mask) return false;
  if (a.op == detail::kSyncWarp) return true;
  return b.width == a.width && same_site(a.view.file, a.view.line, b.view.file, b.view.line);
}

// Computes the results of a complete group and releases it. False when the group is itself
// erroneous (a lane reads a lane outside the mask), with the error recorded.
bool complete_group(Block& b, int warp, unsigned M) {
  Thread* th = &b.t(32 * warp);
  int first = __builtin_ctz(M);
  const Thread& a = th[first];
  unsigned ballot = 0;
  for (int j = 0; j < 32; ++j)
    if (((M >> j) & 1u) && th[j].value) ballot |= 1u << j;
  for (int j = 0; j < 32; ++j) {
    if (!((M >> j) & 1u)) continue;
    Thread& t = th[j];
    switch (a.op) {
      case detail::kShflIdx: case detail::kShflUp: case detail::kShflDown: case detail::kShflXor: {
        const int w = t.width, seg = j & ~(w - 1);
        int src;
        if (a.op == detail::kShflIdx) src = seg + (t.arg & (w - 1));
        else if (a.op == detail::kShflUp) src = (t.arg < 0 || j - t.arg < seg) ? j : j - t.arg;
        else if (a.op == detail::kShflDown) src = (t.arg < 0 || j + t.arg >= seg + w) ? j : j + t.arg;
        else src = ((j ^ (t.arg & 31)) >= seg + w) ? j : (j ^ (t.arg & 31));
        if (src != j && !((M >> src) & 1u)) {
          b.fail(kWarp, strf("%s at %s with mask 0x%08x: %s reads lane %d, which is not in the mask (its value is "
                             "undefined on the GPU)", op_name(a.op), site(t.view.file, t.view.line).c_str(), M,
                             b.lane_name(t.linear).c_str(), src));
          return false;
        }
        t.result = th[src].value;
        break;
      }
      case detail::kBallot: t.result = ballot; break;
      case detail::kAll: t.result = ballot == M; break;
      case detail::kAny: t.result = ballot != 0; break;
      default: t.result = 0; break;
    }
  }
  if (a.op == detail::kSyncWarp) {
    WarpSyncLog& log = b.warps[static_cast<size_t>(warp)];
    log.masks.push_back(M);
    log.gen = static_cast<uint32_t>(log.masks.size());
  }
  for (int j = 0; j < 32; ++j)
    if ((M >> j) & 1u) th[j].state = TS::Runnable;
  return true;
}

// Completes every warp operation that can complete. True if any did (or an error stopped us).
bool resolve_warps(Block& b) {
  bool progress = false;
  const int nwarps = (b.n + 31) / 32;
  for (int w = 0; w < nwarps && !b.failed; ++w) {
    Thread* th = &b.t(32 * w);
    const int n = std::min(32, b.n - 32 * w);
    for (int i = 0; i < n; ++i) {
      Thread& a = th[i];
      if (a.state != TS::Warp) continue;
      if (a.op == detail::kActiveMask) {
        unsigned m = 0;
        for (int j = 0; j < n; ++j)
          if (th[j].state == TS::Warp && th[j].op == detail::kActiveMask &&
              same_site(a.view.file, a.view.line, th[j].view.file, th[j].view.line))
            m |= 1u << j;
        for (int j = 0; j < n; ++j)
          if ((m >> j) & 1u) { th[j].result = m; th[j].state = TS::Runnable; }
        progress = true;
        continue;
      }
      bool complete = true;
      for (int j = 0; j < 32 && complete; ++j)
        if ((a.mask >> j) & 1u) complete = same_group(a, th[j]);
      if (!complete) continue;
      if (!complete_group(b, w, a.mask)) return true;
      progress = true;
    }
  }
  return progress;
}

// Some lane waits at a warp operation that can never complete: say which partners are missing.
void explain_stuck_warp(Block& b) {
  for (int i = 0; i < b.n; ++i) {
    const Thread& a = b.t(i);
    if (a.state != TS::Warp) continue;
    const Thread* th = &b.t(32 * a.warp);
    std::string why;
    int reasons = 0;
    for (int j = 0; j < 32; ++j) {
      if (!((a.mask >> j) & 1u) || same_group(a, th[j])) continue;
      const Thread& o = th[j];
      if (++reasons > 4) { why += "\n    ..."; break; }
      why += "\n    " + b.lane_name(o.linear) + " ";
      if (o.state == TS::Done) why += "has exited";
      else if (o.state == TS::Barrier) why += strf("waits at %s at %s", barrier_name(o.bar_kind), site(o.view.file, o.view.line).c_str());
      else if (o.op == detail::kActiveMask) why += strf("waits at __activemask() at %s", site(o.view.file, o.view.line).c_str());
      else why += strf("waits at %s with mask 0x%08x%s at %s", op_name(o.op), o.mask,
                       o.op == a.op && o.mask == a.mask && o.width != a.width ? strf(" and width %d", o.width).c_str() : "",
                       site(o.view.file, o.view.line).c_str());
    }
    b.fail(kWarp, strf("%s at %s with mask 0x%08x, called by %s, can never complete; the lanes named in the mask "
                       "must all execute this same call with the same mask, but:%s",
                       op_name(a.op), site(a.view.file, a.view.line).c_str(), a.mask, b.lane_name(a.linear).c_str(),
                       why.c_str()));
    return;
  }
}

// A barrier interval ended (barrier released, or every thread exited): the element read before
// any write was not written by another thread within the interval either, so report it now.
bool report_uninit(Block& b) {
  if (b.uninit_msg.empty()) return false;
  b.fail(kUninit, b.uninit_msg);
  return true;
}

// Every live thread waits at a barrier: release it, or report why it is not a real barrier.
void resolve_barrier(Block& b) {
  std::vector<int> waiting, exited;
  for (int i = 0; i < b.n; ++i) (b.t(i).state == TS::Done ? exited : waiting).push_back(i);
  const Thread& first = b.t(waiting.front());
  if (!exited.empty()) {
    b.fail(kBarrier, strf("%s at %s was reached by %s, but %s had already exited. Every thread of the block must "
                          "reach each barrier: look for an early return, or a barrier inside a branch that not "
                          "every thread takes", barrier_name(first.bar_kind),
                          site(first.view.file, first.view.line).c_str(), b.thread_set(waiting).c_str(),
                          b.thread_set(exited).c_str()));
    return;
  }
  std::vector<std::vector<int>> groups;  // threads by barrier site
  for (int i : waiting) {
    bool placed = false;
    for (auto& g : groups) {
      const Thread& r = b.t(g.front());
      const Thread& t = b.t(i);
      if (r.bar_kind == t.bar_kind && same_site(r.view.file, r.view.line, t.view.file, t.view.line)) {
        g.push_back(i);
        placed = true;
        break;
      }
    }
    if (!placed) groups.push_back({i});
  }
  if (groups.size() > 1) {
    std::string where;
    for (size_t k = 0; k < groups.size() && k < 4; ++k) {
      const Thread& r = b.t(groups[k].front());
      where += strf("\n    %s wait at %s at %s", b.thread_set(groups[k]).c_str(), barrier_name(r.bar_kind),
                    site(r.view.file, r.view.line).c_str());
    }
    b.fail(kBarrier, "divergent barrier: the threads of the block wait at different barriers, so none of them is "
                     "reached by every thread (a barrier inside a branch that not every thread takes?):" + where);
    return;
  }
  if (report_uninit(b)) return;
  int count = 0;
  for (int i : waiting) count += b.t(i).pred;
  const int n = static_cast<int>(waiting.size());
  uint64_t result = 0;
  if (first.bar_kind == detail::kBarCount) result = static_cast<uint64_t>(count);
  else if (first.bar_kind == detail::kBarAnd) result = count == n;
  else if (first.bar_kind == detail::kBarOr) result = count != 0;
  b.epoch = ++b.W->epoch;
  for (int i : waiting) {
    b.t(i).result = result;
    b.t(i).state = TS::Runnable;
  }
}

void Worker::run_block(uint32_t linear) {
  const dim3 g = L->grid, bd = L->block;
  Block b;
  b.W = this;
  b.L = L;
  b.idx = uint3{linear % g.x, (linear / g.x) % g.y, linear / (g.x * g.y)};
  b.n = static_cast<int>(L->nthreads);
  b.start_epoch = b.epoch = ++epoch;
  b.check_uninit = L->cfg.check_uninit != 0;
  b.rng = L->cfg.seed ^ (0x9e3779b97f4a7c15ull * (linear + 1ull));
  b.warps.resize(static_cast<size_t>((b.n + 31) / 32));
  for (int i = 0; i < b.n; ++i) {
    Thread& t = threads[static_cast<size_t>(i)];
    const unsigned ui = static_cast<unsigned>(i);
    t.view = detail::ThreadView{uint3{ui % bd.x, (ui / bd.x) % bd.y, ui / (bd.x * bd.y)}, b.idx, bd, g, &L->abort,
                                nullptr, 0};
    t.block = &b;
    t.linear = i;
    t.lane = i & 31;
    t.warp = i >> 5;
    t.state = TS::Runnable;
    ctx_make(t.ctx, stacks.stack(static_cast<size_t>(i)), stacks.size(), fiber_entry);
  }
  std::vector<int> run;
  run.reserve(static_cast<size_t>(b.n));
  for (;;) {
    run.clear();
    for (int i = 0; i < b.n; ++i)
      if (threads[static_cast<size_t>(i)].state == TS::Runnable) run.push_back(i);
    if (run.empty()) {
      bool all_done = true, any_warp = false;
      for (int i = 0; i < b.n; ++i) {
        all_done &= threads[static_cast<size_t>(i)].state == TS::Done;
        any_warp |= threads[static_cast<size_t>(i)].state == TS::Warp;
      }
      if (all_done) {
        report_uninit(b);
        return;
      }
      if (resolve_warps(b)) {
        if (b.failed) return;
        continue;
      }
      if (any_warp) return explain_stuck_warp(b);
      resolve_barrier(b);
      if (b.failed) return;
      continue;
    }
    if (L->cfg.order == 1) std::reverse(run.begin(), run.end());
    else if (L->cfg.order == 2) shuffle(run, b.rng);
    for (int i : run) {
      if (L->abort.load(std::memory_order_relaxed)) {
        if (L->timed_out.load()) b.fail(kTimeout, timeout_message(&b, &threads[static_cast<size_t>(i)]));
        return;
      }
      Thread& t = threads[static_cast<size_t>(i)];
      tls_thread = &t;
      detail::ngemu_tls_view = &t.view;
      ctx_switch(sched, t.ctx);
      tls_thread = nullptr;
      detail::ngemu_tls_view = nullptr;
      if (b.failed) return;
    }
  }
}

void Worker::run() {
  if (!stacks.ensure(L->nthreads, static_cast<size_t>(L->cfg.stack_kib) * 1024)) {
    L->record(kConfig, nullptr, strf("cannot map %u fiber stacks of %u KiB", L->nthreads, L->cfg.stack_kib));
    return;
  }
  threads.resize(L->nthreads);
  while (!L->abort.load()) {
    const size_t k = L->next.fetch_add(1);
    if (k >= L->order.size()) break;
    run_block(L->order[k]);
  }
}

void worker_main(std::shared_ptr<Launch> L) {
  {
    Worker w(L.get());
    w.run();
  }
  {
    std::lock_guard<std::mutex> lk(L->mu);
    ++L->workers_done;
  }
  L->cv.notify_all();
}

std::string check_config(const NgLaunchConfig& c) {
  const uint32_t* g = c.grid;
  const uint32_t* b = c.block;
  if (!g[0] || !g[1] || !g[2] || !b[0] || !b[1] || !b[2]) return "grid and block dimensions must be at least 1";
  if (b[0] > 1024 || b[1] > 1024 || b[2] > 64 || uint64_t(b[0]) * b[1] * b[2] > 1024)
    return strf("block (%u,%u,%u): at most 1024 threads, x and y at most 1024, z at most 64", b[0], b[1], b[2]);
  if (g[0] > 0x7fffffffu || g[1] > 65535 || g[2] > 65535)
    return strf("grid (%u,%u,%u): x at most 2^31-1, y and z at most 65535", g[0], g[1], g[2]);
  if (uint64_t(g[0]) * g[1] * g[2] > kMaxBlocks)
    return strf("grid (%u,%u,%u) has more than %llu blocks, more than the emulator runs", g[0], g[1], g[2],
                static_cast<unsigned long long>(kMaxBlocks));
  if (c.order < 0 || c.order > 2) return "order must be 0 (forward), 1 (reverse) or 2 (random)";
  if (!(c.timeout_s > 0)) return "timeout must be positive";
  if (c.stack_kib < 16) return "stack_kib must be at least 16";
  return "";
}

void copy_out(NgErrorOut* err, int kind, bool has_block, uint3 blk, const std::string& msg) {
  if (!err) return;
  err->kind = kind;
  err->has_block = has_block;
  err->block[0] = blk.x;
  err->block[1] = blk.y;
  err->block[2] = blk.z;
  std::snprintf(err->message, sizeof err->message, "%s", msg.c_str());
}

}  // namespace

namespace detail {

int run_launch(const NgLaunchConfig* cfg, const char* kernel, Invoker inv, NgErrorOut* err) {
  auto L = std::make_shared<Launch>(*cfg, kernel, inv);
  const std::string bad = check_config(*cfg);
  if (!bad.empty()) {
    copy_out(err, kConfig, false, uint3{0, 0, 0}, strf("emulated kernel '%s': bad launch: %s", kernel, bad.c_str()));
    return kConfig;
  }
  L->grid = dim3(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
  L->block = dim3(cfg->block[0], cfg->block[1], cfg->block[2]);
  L->nthreads = cfg->block[0] * cfg->block[1] * cfg->block[2];
  const uint32_t nblocks = cfg->grid[0] * cfg->grid[1] * cfg->grid[2];
  L->order.resize(nblocks);
  for (uint32_t i = 0; i < nblocks; ++i) L->order[i] = i;
  if (cfg->order == 1) std::reverse(L->order.begin(), L->order.end());
  if (cfg->order == 2) {
    uint64_t rng = cfg->seed;
    shuffle(L->order, rng);
  }
  const unsigned nworkers = std::max(1u, std::min<unsigned>(cfg->workers, nblocks));
  std::vector<std::thread> workers;
  try {
    for (unsigned w = 0; w < nworkers; ++w) workers.emplace_back(worker_main, L);
  } catch (const std::exception& e) {
    L->abort.store(true);
    for (auto& t : workers) t.join();
    copy_out(err, kConfig, false, uint3{0, 0, 0}, strf("emulated kernel '%s': cannot start a worker thread: %s", kernel, e.what()));
    return kConfig;
  }
  bool finished;
  {
    std::unique_lock<std::mutex> lk(L->mu);
    auto done = [&] { return L->workers_done == nworkers; };
    finished = L->cv.wait_for(lk, std::chrono::duration<double>(cfg->timeout_s), done);
    if (!finished) {
      L->timed_out.store(true);
      L->abort.store(true);
      const double grace = std::min(2.0, std::max(0.25, 0.1 * cfg->timeout_s));
      finished = L->cv.wait_for(lk, std::chrono::duration<double>(grace), done);
    }
  }
  for (auto& t : workers) {
    if (finished) t.join();
    else t.detach();  // it holds a reference to L, which outlives it
  }
  std::lock_guard<std::mutex> lk(L->mu);
  if (!finished) {
    std::string msg = strf("emulated kernel '%s': the launch ran past its time limit of %g s and a thread did not "
                           "stop: it is in code that reaches no emulated construct (a pure arithmetic endless loop?). "
                           "Its OS thread was abandoned and keeps running; its arrays are never freed",
                           kernel, cfg->timeout_s);
    if (L->has_error) msg += "\n" + L->err_msg;
    copy_out(err, kAbandoned, L->err_has_block, L->err_block, msg);
    return kAbandoned;
  }
  if (L->has_error) {
    copy_out(err, L->err_kind, L->err_has_block, L->err_block, L->err_msg);
    return L->err_kind;
  }
  copy_out(err, kOk, false, uint3{0, 0, 0}, "");
  return kOk;
}

}  // namespace detail
}  // namespace ngemu
