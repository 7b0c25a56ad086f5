// Execution model of the emulator: one dispatch, threadgroup by threadgroup.
//
// Every thread of a threadgroup is a fiber with its own stack. Fibers run
// until they block at a threadgroup barrier or a SIMD-group function; the
// scheduler then checks that the whole threadgroup (or SIMD-group) is waiting
// at the same call, completes it, and lets everyone go on. Anything else
// (threads that returned, or wait at another call) is a divergence that would
// hang or give garbage on a GPU: the launch stops with an error instead.
// Kernels with no synchronization run without fibers; the first barrier seen
// there asks the host to run the launch again with fibers.
#pragma once

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

// The runtime is never instrumented (sanitizer.h): only the kernel's own accesses are checked.
#pragma clang attribute push(__attribute__((no_sanitize("kernel-address"))), apply_to = function)

#include "fiber.h"

namespace mpsk_rt {

// Hooks of the instrumented build (sanitizer.h); empty in the fast one.
inline void san_launch_begin();
inline void san_group_begin();
inline void san_epoch();
inline void san_atomic(const void* p, unsigned long n);

constexpr int kSimdWidth = 32;
constexpr int kMaxThreadsPerGroup = 1024;
constexpr unsigned long kMaxThreadgroupMemory = 32768;
constexpr unsigned long kFiberStack = 256 * 1024;
constexpr unsigned long kRedZone = 64;
constexpr int kMaxThreadgroupVars = 64;
constexpr unsigned char kPoison = 0xFF;  // NaN in every float width, -1 in every int.

// Dispatch attributes; the host reads their names through mpsk_attr_name.
enum A : int {
  thread_position_in_grid,
  threadgroup_position_in_grid,
  thread_position_in_threadgroup,
  threads_per_threadgroup,
  dispatch_threads_per_threadgroup,
  threadgroups_per_grid,
  threads_per_grid,
  thread_index_in_threadgroup,
  thread_index_in_simdgroup,
  simdgroup_index_in_threadgroup,
  threads_per_simdgroup,
  simdgroups_per_threadgroup,
  dispatch_simdgroups_per_threadgroup,
  thread_execution_width,
  thread_index_in_quadgroup,
  quadgroup_index_in_threadgroup,
  quadgroups_per_threadgroup,
  dispatch_quadgroups_per_threadgroup,
  kNumAttrs
};

inline const char* const kAttrNames[kNumAttrs] = {
    "thread_position_in_grid",        "threadgroup_position_in_grid",
    "thread_position_in_threadgroup", "threads_per_threadgroup",
    "dispatch_threads_per_threadgroup", "threadgroups_per_grid",
    "threads_per_grid",               "thread_index_in_threadgroup",
    "thread_index_in_simdgroup",      "simdgroup_index_in_threadgroup",
    "threads_per_simdgroup",          "simdgroups_per_threadgroup",
    "dispatch_simdgroups_per_threadgroup", "thread_execution_width",
    "thread_index_in_quadgroup",      "quadgroup_index_in_threadgroup",
    "quadgroups_per_threadgroup",     "dispatch_quadgroups_per_threadgroup",
};
// Attributes with x, y and z components; the others are scalars.
inline constexpr bool kAttrIs3d[kNumAttrs] = {true,  true,  true,  true,  true,  true,  true,  false, false,
                                              false, false, false, false, false, false, false, false, false};

enum class St : unsigned char { Ready, Blocked, Done };
enum class Sync : unsigned char { None, Barrier, Simd };

struct Site {
  const char* what = "";
  const char* file = "";
  unsigned line = 0, col = 0;
};

inline bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && a.col == b.col && strcmp(a.what, b.what) == 0 &&
         strcmp(a.file, b.file) == 0;
}

struct Thread;
// Completes one SIMD-group function for all lanes at once, so no lane can
// overwrite its input before the others have read it.
using CombineFn = void (*)(Thread* const* lanes, int n);

struct Thread {
  Fiber fiber;
  unsigned a[kNumAttrs][3];
  St st;
  Sync sync;
  Site site;
  CombineFn combine;
  long iarg;
  void* ptr[4];
  alignas(16) unsigned char in[32];
  alignas(16) unsigned char out[32];
};

struct TgVar {
  int site;
  unsigned long off, size;
  const char* name;
  bool fresh;  // allocated and not yet initialized
};

struct Launch {
  void (*entry)(void**);
  void** bufs;
  unsigned grid[3], group[3], ngroups[3];
  unsigned gid[3];
  bool fibers;
  bool strict;  // every lane must reach each SIMD-group function and barrier
  bool failed;
  bool needs_fibers;
  char* err;
  int errlen;
  jmp_buf escape;
  Fiber sched;
  int n;  // threads in the current group
  TgVar tg[kMaxThreadgroupVars];
  int ntg;
  unsigned long tg_used;
  const unsigned long* tg_params;  // bytes of each [[threadgroup(k)]] parameter, set by the host
};

inline thread_local Launch* L = nullptr;
inline thread_local Thread* T = nullptr;

inline unsigned char* arena() {
  constexpr unsigned long size = kMaxThreadgroupMemory + 2 * kRedZone * kMaxThreadgroupVars + 256;
  alignas(64) static thread_local unsigned char buf[size];
  return buf;
}

inline void vfail(const char* fmt, va_list ap) {
  if (L->failed) return;
  L->failed = true;
  vsnprintf(L->err, L->errlen, fmt, ap);
}

inline void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(fmt, ap);
  va_end(ap);
}

// Stops the calling thread after an error; the launch ends with that error.
[[noreturn]] inline void abort_thread() {
  if (L->fibers) {
    fiber_switch(T->fiber, L->sched);  // never resumed
  }
  longjmp(L->escape, 1);
}

[[noreturn]] inline void trap(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(fmt, ap);
  va_end(ap);
  abort_thread();
}

inline const char* group_str() {
  static thread_local char s[64];
  snprintf(s, sizeof s, "threadgroup (%u, %u, %u)", L->gid[0], L->gid[1], L->gid[2]);
  return s;
}

// ---- threadgroup memory ----------------------------------------------------

constexpr unsigned long round16(unsigned long n) { return (n + 15) & ~15ul; }
// Bytes of arena() (same formula): all poisoned when a group allocates its first
// variable, so a stray write anywhere past the last variable is caught too.
constexpr unsigned long kArenaBytes = kMaxThreadgroupMemory + 2 * kRedZone * kMaxThreadgroupVars + 256;

// Storage for a kernel-scope `threadgroup` variable, shared by the threadgroup:
// the first thread to reach the declaration allocates it, poisoned, between
// red zones that are checked when the group ends.
inline void* tg_alloc(int site, unsigned long size, const char* name) {
  for (int i = 0; i < L->ntg; ++i)
    if (L->tg[i].site == site) return arena() + L->tg[i].off;
  if (L->ntg == kMaxThreadgroupVars) trap("more than %d threadgroup variables", kMaxThreadgroupVars);
  unsigned long total = round16(size);
  for (int i = 0; i < L->ntg; ++i) total += round16(L->tg[i].size);
  if (total > kMaxThreadgroupMemory)
    trap("threadgroup memory of %lu bytes exceeds the %lu-byte limit (at '%s')", total,
         kMaxThreadgroupMemory, name);
  unsigned long off = L->tg_used + kRedZone;
  if (L->ntg == 0) memset(arena(), kPoison, kArenaBytes);
  L->tg[L->ntg++] = TgVar{site, off, size, name, true};
  L->tg_used = off + round16(size) + kRedZone;
  return arena() + off;
}

// Whether the calling thread is the first to reach the declaration at `site` in this group
// (it then applies the declaration's initializer).
inline bool tg_fresh(int site) {
  for (int i = 0; i < L->ntg; ++i)
    if (L->tg[i].site == site) {
      const bool fresh = L->tg[i].fresh;
      L->tg[i].fresh = false;
      return fresh;
    }
  return false;
}

inline bool check_tg_red_zones() {
  for (int i = 0; i < L->ntg; ++i) {
    const TgVar& v = L->tg[i];
    const unsigned char* lo = arena() + v.off - kRedZone;
    const unsigned char* hi = arena() + v.off + v.size;
    unsigned long hi_len = round16(v.size) - v.size + kRedZone;
    for (unsigned long k = 0; k < kRedZone; ++k)
      if (lo[k] != kPoison) {
        fail("write before the start of threadgroup array '%s' (%lu bytes before it) in %s",
             v.name, kRedZone - k, group_str());
        return false;
      }
    for (unsigned long k = 0; k < hi_len; ++k)
      if (hi[k] != kPoison) {
        fail("write past the end of threadgroup array '%s' (at byte %lu of a %lu-byte array) in %s",
             v.name, v.size + k, v.size, group_str());
        return false;
      }
  }
  if (L->ntg > 0) {
    const TgVar& last = L->tg[L->ntg - 1];
    unsigned long k = L->tg_used;
    // Skip clean 8-byte words quickly; the byte loop below pins down the first stray byte.
    while (k % 8 && k < kArenaBytes && arena()[k] == kPoison) ++k;
    while (k + 8 <= kArenaBytes) {
      unsigned long word;
      memcpy(&word, arena() + k, 8);
      if (word != ~0ul) break;
      k += 8;
    }
    for (; k < kArenaBytes; ++k)
      if (arena()[k] != kPoison) {
        fail("write past the end of threadgroup array '%s' (at byte %lu of a %lu-byte array) in %s",
             last.name, k - last.off, last.size, group_str());
        return false;
      }
  }
  return true;
}

// ---- address spaces of dependent types ---------------------------------------------

// `device T` with T a template parameter (the pre-pass writes in_space<1, T>): scalars and
// vectors keep the address space, class types drop it (see prepass/address_spaces.py);
// constant memory is const either way.
template <class X>
struct keeps_space {  // class types that keep their address space (atomics, in atomic.h)
  static constexpr bool value = false;
};
template <int AS, class X>
using in_space_value = metal::conditional_t<AS == 2, const X, X>;
#ifdef MPSK_GENERIC_SPACES
inline constexpr bool kGenericSpaces = true;
#else
inline constexpr bool kGenericSpaces = false;
#endif
template <int AS, class X>
using in_space = metal::conditional_t<((__is_class(__remove_cv(X)) || __is_union(__remove_cv(X))) &&
                                       !keeps_space<__remove_cv(X)>::value) ||
                                          kGenericSpaces,
                                      in_space_value<AS, X>,
                                      __attribute__((address_space(AS))) in_space_value<AS, X>>;

// ---- plain-data objects in an address space --------------------------------------

// Clang cannot copy a class object in device, constant or threadgroup memory; the pre-pass
// routes whole-object copies of plain-data classes through these, as Metal copies them.
// They are the kernel's own accesses, so the instrumented build checks them.
#pragma clang attribute pop
template <class A>
inline typename metal::remove_cvas<A>::type load(const A& a) {
  typename metal::remove_cvas<A>::type r;
  __builtin_memcpy(&r, (const void*)(unsigned long)&a, sizeof r);
  return r;
}
template <class A, class B>
inline void store(A& dst, const B& src) {
  static_assert(sizeof(typename metal::remove_cvas<A>::type) == sizeof(typename metal::remove_cvas<B>::type),
                "store of one class into another");
  __builtin_memcpy((void*)(unsigned long)&dst, (const void*)(unsigned long)&src, sizeof src);
}
#pragma clang attribute push(__attribute__((no_sanitize("kernel-address"))), apply_to = function)

// ---- function constants the host did not set -------------------------------------

template <class T>
struct UnsetConstant {
  const char* name;
  int index;
  operator T() const {
    trap("function constant '%s' ([[function_constant(%d)]]) was never set; pass constants={'%s': ...} "
         "to get_kernel_function (Metal makes no pipeline without it)",
         name, index, name);
  }
};

// ---- string literals ------------------------------------------------------------

// Metal's string literals live in the constant address space; the pre-pass wraps each
// one (and __func__) in this, so `constant char*` parameters take them and thread ones do not.
template <unsigned long N>
inline constexpr constant char* cstr(const char (&s)[N]) {
  return (constant char*)(unsigned long)s;
}
inline constant char* cstr(const char* s) {
  return (constant char*)(unsigned long)s;
}

// ---- atomics ------------------------------------------------------------------

// Device bytes changed by atomic read-modify-writes in the current launch, as
// merged [lo, hi) address ranges (the last one grows when the table is full). The
// host compares these bytes across the two schedules with a tolerance, since the
// order of atomic float additions changes their rounding.
constexpr int kMaxAtomicRanges = 64;
inline thread_local unsigned long atomic_ranges[kMaxAtomicRanges][2];
// Per range: (number of float read-modify-writes) x (largest magnitude among their operands and
// results), which bounds how far another order of the same additions can round the result.
inline thread_local double atomic_scale[kMaxAtomicRanges];
inline thread_local int num_atomic_ranges = 0;

inline void note_atomic(const void* p, unsigned long size, double magnitude = 0.0) {
  const unsigned long lo = (unsigned long)p, hi = lo + size;
  int r = 0;
  while (r < num_atomic_ranges && !(lo <= atomic_ranges[r][1] && hi >= atomic_ranges[r][0])) ++r;
  if (r == num_atomic_ranges) {
    if (num_atomic_ranges == kMaxAtomicRanges) {
      r = kMaxAtomicRanges - 1;  // full: the last range grows to cover this one too
    } else {
      atomic_ranges[r][0] = lo;
      atomic_ranges[r][1] = hi;
      atomic_scale[r] = 0.0;
      ++num_atomic_ranges;
    }
  }
  atomic_ranges[r][0] = lo < atomic_ranges[r][0] ? lo : atomic_ranges[r][0];
  atomic_ranges[r][1] = hi > atomic_ranges[r][1] ? hi : atomic_ranges[r][1];
  // Each addition's rounding error is at most half an ulp of its result; summing the largest
  // magnitude over the operations bounds the spread between orders.
  atomic_scale[r] += magnitude;
}

// ---- undefined behaviour that is not an error --------------------------------

// The first read of an inactive lane in the current launch (undefined in Metal;
// the value is poisoned here). The host turns it into a warning naming the call.
inline thread_local char undefined_note[256];

inline void note_undefined(const char* what, unsigned line, int lane, int src) {
  if (undefined_note[0]) return;
  snprintf(undefined_note, sizeof undefined_note,
           "%s (line %u): lane %d read lane %d, which is inactive; Metal leaves the value undefined "
           "(poisoned here)",
           what, line, lane, src);
}

// ---- synchronization -------------------------------------------------------

// Called by every barrier and SIMD-group function.
inline void block(Sync kind, const Site& site, CombineFn combine) {
  if (!L->fibers) {
    L->needs_fibers = true;
    longjmp(L->escape, 1);
  }
  Thread* t = T;
  t->st = St::Blocked;
  t->sync = kind;
  t->site = site;
  t->combine = combine;
  fiber_switch(t->fiber, L->sched);
}

inline int lane_count(int simd) {
  int first = simd * kSimdWidth;
  return (L->n - first) < kSimdWidth ? (L->n - first) : kSimdWidth;
}

inline const char* describe_wait(const Thread& t) {
  static thread_local char s[160];
  if (t.st == St::Done) return "returned";
  snprintf(s, sizeof s, "waits at %s (line %u)", t.site.what, t.site.line);
  return s;
}

// SIMD-group functions act on the lanes that call them (Metal's active lanes):
// lanes that returned, wait at a barrier or at another call are inactive for
// this one, and reading them is undefined (poisoned, or an error). In strict
// mode (this project's own kernels) every lane must reach the same call.
inline bool resolve_simd(Thread* threads, bool& released) {
  const int nsimd = (L->n + kSimdWidth - 1) / kSimdWidth;
  for (int s = 0; s < nsimd; ++s) {
    Thread* lanes[kSimdWidth];
    const int m = lane_count(s);
    int at_simd = -1, other = -1;
    for (int i = 0; i < m; ++i) {
      lanes[i] = &threads[s * kSimdWidth + i];
      if (lanes[i]->st == St::Blocked && lanes[i]->sync == Sync::Simd) {
        if (at_simd < 0) at_simd = i;
      } else if (other < 0) {
        other = i;
      }
    }
    if (at_simd < 0) continue;
    const Site site = lanes[at_simd]->site;
    if (L->strict) {
      if (other >= 0) {
        int reached = 0;
        for (int i = 0; i < m; ++i) reached += lanes[i]->st == St::Blocked && lanes[i]->sync == Sync::Simd;
        fail("%s (line %u) reached by %d of %d lanes of SIMD-group %d in %s: lane %d %s (strict mode: "
             "every lane must reach a SIMD-group function)",
             site.what, site.line, reached, m, s, group_str(), other, describe_wait(*lanes[other]));
        return false;
      }
      for (int i = 0; i < m; ++i)
        if (!same_site(lanes[i]->site, site)) {
          fail("lanes of SIMD-group %d in %s diverged: lane %d waits at %s (line %u), lane %d at %s (line %u) "
               "(strict mode)",
               s, group_str(), at_simd, site.what, site.line, i, lanes[i]->site.what, lanes[i]->site.line);
          return false;
        }
    }
    Thread* active[kSimdWidth];
    for (int i = 0; i < m; ++i) {
      const bool here = lanes[i]->st == St::Blocked && lanes[i]->sync == Sync::Simd &&
                        same_site(lanes[i]->site, site);
      active[i] = here ? lanes[i] : nullptr;
    }
    if (lanes[at_simd]->combine) {
      lanes[at_simd]->combine(active, m);
      if (L->failed) return false;
    }
    for (int i = 0; i < m; ++i)
      if (active[i]) active[i]->st = St::Ready;
    released = true;
  }
  return true;
}

// A threadgroup barrier releases once every thread still running waits at it.
// Threads that returned before it: an error in strict mode; otherwise allowed
// when each SIMD-group still has a lane at the barrier, as Apple GPUs count
// barrier arrival per SIMD-group (MLX's gemv relies on this). A SIMD-group
// that returned whole, or threads at different barriers, are errors always.
inline bool resolve_barrier(Thread* threads) {
  int first = -1, done = 0;
  for (int i = 0; i < L->n; ++i) {
    if (threads[i].st == St::Done) {
      ++done;
    } else if (first < 0) {
      first = i;
    }
  }
  const Thread& f = threads[first];
  for (int i = 0; i < L->n; ++i)
    if (threads[i].st != St::Done && !same_site(threads[i].site, f.site)) {
      fail("threads of %s diverged: thread %d waits at %s (line %u), thread %d at %s (line %u)",
           group_str(), first, f.site.what, f.site.line, i, threads[i].site.what, threads[i].site.line);
      return false;
    }
  if (done) {
    int d = 0;
    while (threads[d].st != St::Done) ++d;
    if (L->strict) {
      fail("%s (line %u) reached by %d of %d threads of %s: thread %d returned without reaching it",
           f.site.what, f.site.line, L->n - done, L->n, group_str(), d);
      return false;
    }
    const int nsimd = (L->n + kSimdWidth - 1) / kSimdWidth;
    for (int s = 0; s < nsimd; ++s) {
      bool waiting = false;
      for (int i = s * kSimdWidth; i < s * kSimdWidth + lane_count(s); ++i) waiting |= threads[i].st != St::Done;
      if (!waiting) {
        fail("%s (line %u): every thread of SIMD-group %d of %s returned without reaching it, while others "
             "wait there",
             f.site.what, f.site.line, s, group_str());
        return false;
      }
    }
  }
  for (int i = 0; i < L->n; ++i)
    if (threads[i].st != St::Done) threads[i].st = St::Ready;
  return true;
}

inline bool resolve(Thread* threads) {
  bool released = false;
  if (!resolve_simd(threads, released)) return false;
  if (released) return true;
  return resolve_barrier(threads);
}

// ---- misaligned access ------------------------------------------------------------

// Kernels are compiled with -fsanitize=alignment: every typed load or store
// through a pointer checks its alignment and calls here when it is off. On a
// GPU a misaligned vector access is undefined; here it stops the launch.
struct UbsanLocation {
  const char* file;
  unsigned line, column;
};
struct UbsanType {
  unsigned short kind, info;
  char name[1];
};
struct UbsanMismatch {
  UbsanLocation loc;
  const UbsanType* type;
  unsigned char log_alignment;
  unsigned char check_kind;
};

[[noreturn]] inline void misaligned(const UbsanMismatch* d, unsigned long address) {
  static const char* const kinds[] = {"load of", "store to", "reference to", "member access within"};
  const char* what = d->check_kind < 4 ? kinds[d->check_kind] : "access to";
  trap("misaligned %s %s at an address %lu bytes past a %lu-byte boundary (line %u, column %u); Metal "
       "needs %lu-byte alignment there",
       what, d->type->name, address % (1ul << d->log_alignment), 1ul << d->log_alignment, d->loc.line,
       d->loc.column, 1ul << d->log_alignment);
}

// A pointer to a vector type, made by a cast in the kernel (the pre-pass routes
// `(device float4*)p` and reinterpret_cast here): the address must be aligned
// for the vector, as Metal's vector loads and stores require.
template <class P, class Q>
inline P vector_pointer(Q q, unsigned line = __builtin_LINE()) {
  P p = (P)q;
  constexpr unsigned long align = alignof(__remove_pointer(P));
  const unsigned long address = (unsigned long)p;
  if (address % align)
    trap("misaligned pointer to a %lu-byte-aligned vector type at line %u: the address is %lu bytes past a "
         "%lu-byte boundary",
         align, line, address % align, align);
  return p;
}

// ---- dispatch ------------------------------------------------------------------

inline Thread* thread_pool() {
  static thread_local Thread* pool = nullptr;
  if (!pool) {
    pool = static_cast<Thread*>(mmap(nullptr, sizeof(Thread) * kMaxThreadsPerGroup,
                                     PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  return pool;
}

// Fiber stacks, each above a guard page so an overflow faults instead of
// silently corrupting a neighbour. Every library in a process takes them from
// the host's one pool per host thread (mpsk_set_stack_provider): stacks of its
// own would cost each loaded library up to 2048 memory mappings, and a process
// may hold only about 65000.
inline unsigned char* (*stack_provider)(int) = nullptr;

inline unsigned char* fiber_stack(int i) {
  static thread_local unsigned char* stacks[kMaxThreadsPerGroup] = {};
  if (!stacks[i]) {
    if (stack_provider) stacks[i] = stack_provider(i);
    if (!stacks[i]) {
      void* p = mmap(nullptr, kFiberStack + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
      mprotect(p, 4096, PROT_NONE);
      stacks[i] = static_cast<unsigned char*>(p) + 4096;
    }
  }
  return stacks[i];
}

// A fiber's whole life: run the kernel, then hand control back for good.
inline void fiber_main() {
  L->entry(L->bufs);
  T->st = St::Done;
  fiber_switch(T->fiber, L->sched);
  __builtin_unreachable();
}

inline void set3(unsigned* d, unsigned x, unsigned y, unsigned z) {
  d[0] = x;
  d[1] = y;
  d[2] = z;
}

inline void init_thread(Thread& t, int i, const unsigned* actual) {
  const unsigned tx = i % actual[0], ty = (i / actual[0]) % actual[1], tz = i / (actual[0] * actual[1]);
  const unsigned n = actual[0] * actual[1] * actual[2];
  const unsigned nominal = L->group[0] * L->group[1] * L->group[2];
  set3(t.a[thread_position_in_grid], L->gid[0] * L->group[0] + tx, L->gid[1] * L->group[1] + ty,
       L->gid[2] * L->group[2] + tz);
  set3(t.a[threadgroup_position_in_grid], L->gid[0], L->gid[1], L->gid[2]);
  set3(t.a[thread_position_in_threadgroup], tx, ty, tz);
  set3(t.a[threads_per_threadgroup], actual[0], actual[1], actual[2]);
  set3(t.a[dispatch_threads_per_threadgroup], L->group[0], L->group[1], L->group[2]);
  set3(t.a[threadgroups_per_grid], L->ngroups[0], L->ngroups[1], L->ngroups[2]);
  set3(t.a[threads_per_grid], L->grid[0], L->grid[1], L->grid[2]);
  set3(t.a[thread_index_in_threadgroup], i, 0, 0);
  set3(t.a[thread_index_in_simdgroup], i % kSimdWidth, 0, 0);
  set3(t.a[simdgroup_index_in_threadgroup], i / kSimdWidth, 0, 0);
  set3(t.a[threads_per_simdgroup], kSimdWidth, 0, 0);
  set3(t.a[simdgroups_per_threadgroup], (n + kSimdWidth - 1) / kSimdWidth, 0, 0);
  set3(t.a[dispatch_simdgroups_per_threadgroup], (nominal + kSimdWidth - 1) / kSimdWidth, 0, 0);
  set3(t.a[thread_execution_width], kSimdWidth, 0, 0);
  set3(t.a[thread_index_in_quadgroup], i % 4, 0, 0);
  set3(t.a[quadgroup_index_in_threadgroup], i / 4, 0, 0);
  set3(t.a[quadgroups_per_threadgroup], (n + 3) / 4, 0, 0);
  set3(t.a[dispatch_quadgroups_per_threadgroup], (nominal + 3) / 4, 0, 0);
  t.st = St::Ready;
  t.sync = Sync::None;
}

inline bool run_group(const unsigned* actual, bool forward_first) {
  const int n = L->n;
  Thread* threads = thread_pool();
  L->ntg = 0;
  L->tg_used = 0;
  san_group_begin();
  if (!L->fibers) {
    if (setjmp(L->escape)) return false;
    for (int k = 0; k < n; ++k) {
      const int i = forward_first ? k : n - 1 - k;
      init_thread(threads[0], i, actual);
      T = &threads[0];
      L->entry(L->bufs);
    }
    return check_tg_red_zones();
  }
  for (int i = 0; i < n; ++i) {
    Thread& t = threads[i];
    init_thread(t, i, actual);
    fiber_init(t.fiber, fiber_stack(i), kFiberStack, fiber_main);
  }
  // Alternate the order in which threads run between phases, so a missing
  // barrier shows up whichever way the data flows between threads.
  bool forward = forward_first;
  for (;;) {
    for (int k = 0; k < n; ++k) {
      Thread& t = threads[forward ? k : n - 1 - k];
      if (t.st != St::Ready) continue;
      T = &t;
      fiber_switch(L->sched, t.fiber);
      if (L->failed) return false;
    }
    forward = !forward;
    int done = 0;
    for (int i = 0; i < n; ++i) done += threads[i].st == St::Done;
    if (done == n) break;
    if (!resolve(threads)) return false;
    san_epoch();
  }
  return check_tg_red_zones();
}

enum Status { kOk = 0, kError = 1, kNeedsFibers = 2 };

// A kernel that faults (a pointer outside every buffer, a misaligned vector
// access the cast check could not see, a fiber stack overflow) ends its launch
// with an error instead of taking the host process down. The handler runs on
// an alternate stack and jumps back to the launch.
inline thread_local sigjmp_buf* fault_escape = nullptr;
inline thread_local unsigned long fault_address = 0;

inline void on_fault(int sig, siginfo_t* info, void*) {
  if (!fault_escape) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  fault_address = reinterpret_cast<unsigned long>(info->si_addr);
  siglongjmp(*fault_escape, sig);
}

inline void ensure_signal_stack() {
  stack_t current;
  if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
  constexpr unsigned long size = 64 * 1024;
  stack_t ss;
  ss.ss_sp = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ss.ss_size = size;
  ss.ss_flags = 0;
  sigaltstack(&ss, nullptr);
}

struct FaultGuard {
  struct sigaction old_segv, old_bus;
  explicit FaultGuard(sigjmp_buf* env) {
    ensure_signal_stack();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    fault_escape = env;
  }
  ~FaultGuard() {
    fault_escape = nullptr;
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
  }
};

enum Flags { kFibers = 1, kFlipSchedule = 2, kStrict = 4 };

// Runs one dispatch. The host runs each launch twice, the second time with
// kFlipSchedule: threadgroups in the opposite order and every phase of every
// group with its threads in the opposite order. A kernel whose results differ
// between the two depends on scheduling: a missing barrier or a write race.
inline int launch(void (*entry)(void**), void** bufs, const unsigned* grid, const unsigned* group,
                  const unsigned long* tg_params, int flags, char* err, int errlen) {
  Launch launch{};
  launch.entry = entry;
  launch.bufs = bufs;
  launch.tg_params = tg_params;
  launch.fibers = (flags & kFibers) != 0;
  launch.strict = (flags & kStrict) != 0;
  const bool flip = (flags & kFlipSchedule) != 0;
  launch.err = err;
  launch.errlen = errlen;
  for (int d = 0; d < 3; ++d) {
    launch.grid[d] = grid[d];
    launch.group[d] = group[d];
    launch.ngroups[d] = (grid[d] + group[d] - 1) / group[d];
  }
  Launch* outer = L;
  L = &launch;
  num_atomic_ranges = 0;
  undefined_note[0] = 0;
  san_launch_begin();
  int status = kOk;
  const unsigned long total = (unsigned long)launch.ngroups[0] * launch.ngroups[1] * launch.ngroups[2];
  sigjmp_buf env;
  FaultGuard guard(&env);
  if (int sig = sigsetjmp(env, 1)) {
    launch.failed = false;
    fail("the kernel faulted (%s at address 0x%lx) in %s: a pointer outside every buffer, a misaligned "
         "access, or a stack overflow",
         sig == SIGBUS ? "SIGBUS" : "SIGSEGV", fault_address, group_str());
    L = outer;
    return kError;
  }
  for (unsigned long step = 0; step < total; ++step) {
    const unsigned long g = flip ? step : total - 1 - step;
    launch.gid[0] = g % launch.ngroups[0];
    launch.gid[1] = (g / launch.ngroups[0]) % launch.ngroups[1];
    launch.gid[2] = g / ((unsigned long)launch.ngroups[0] * launch.ngroups[1]);
    unsigned actual[3];
    for (int d = 0; d < 3; ++d) {
      const unsigned start = launch.gid[d] * group[d];
      actual[d] = grid[d] - start < group[d] ? grid[d] - start : group[d];
    }
    launch.n = actual[0] * actual[1] * actual[2];
    if (!run_group(actual, ((g & 1) == 0) != flip)) {
      status = launch.needs_fibers ? kNeedsFibers : kError;
      break;
    }
  }
  L = outer;
  return status;
}

// ---- kernel arguments ------------------------------------------------------------

template <class T>
struct as_of {
  static constexpr int value = 0;
};
template <class T, int AS>
struct as_of<__attribute__((address_space(AS))) T> {
  static constexpr int value = AS;
};

enum TypeCode : int {
  kOther = 0, kFloat, kHalf, kBFloat, kBool, kChar, kUChar, kShort, kUShort, kInt, kUInt, kLong, kULong
};

template <class E> constexpr int type_code() { return kOther; }
template <> constexpr int type_code<float>() { return kFloat; }
template <> constexpr int type_code<half>() { return kHalf; }
template <> constexpr int type_code<bfloat>() { return kBFloat; }
template <> constexpr int type_code<bool>() { return kBool; }
template <> constexpr int type_code<char>() { return kChar; }
template <> constexpr int type_code<signed char>() { return kBool; }  // the lanes of boolN
template <> constexpr int type_code<uchar>() { return kUChar; }
template <> constexpr int type_code<short>() { return kShort; }
template <> constexpr int type_code<ushort>() { return kUShort; }
template <> constexpr int type_code<int>() { return kInt; }
template <> constexpr int type_code<uint>() { return kUInt; }
template <> constexpr int type_code<long>() { return kLong; }
template <> constexpr int type_code<ulong>() { return kULong; }

enum ParamKind : int { kBuffer = 0, kAttribute = 1, kThreadgroupParam = 2 };
constexpr int kMaxThreadgroupParams = 8;

// How the host binds one kernel parameter.
struct ParamInfo {
  int kind;       // ParamKind
  int index;      // buffer index, or attribute id
  int is_pointer; // a buffer passed as T*; otherwise as T&
  int type_code;  // element type
  int lanes;      // 1 for scalars
  int elem_size;  // bytes of one element (one lane for vectors)
  int addr_space; // 1 device, 2 constant, 3 threadgroup, 0 thread
  int is_const;
  int optional;   // a buffer the host may leave unbound ([[function_constant]] off)
};

struct Spec {
  int kind;
  int index;
  int optional;
  int space;  // the address space the declaration names (the type may have lost it: class types)
};

template <class P>
constexpr ParamInfo describe(Spec s) {
  using R = __remove_reference_t(P);
  constexpr bool ptr = __is_pointer(R);
  using Pointee = __remove_cv(__remove_pointer(R));
  using Q = __remove_cv(typename metal::strip_as<Pointee>::type);
  using E = typename metal::vinfo<Q>::elem;
  constexpr int elem_size = __is_void(E) ? 1 : (int)sizeof(metal::conditional_t<__is_void(E), char, E>);
  return ParamInfo{s.kind,
                   s.index,
                   ptr,
                   type_code<__remove_cv(E)>(),
                   metal::vinfo<Q>::lanes,
                   elem_size,
                   as_of<__remove_cv(Pointee)>::value ? as_of<__remove_cv(Pointee)>::value : s.space,
                   __is_const(typename metal::strip_as<__remove_cv(Pointee)>::type) ||
                       __is_const(__remove_pointer(R)),
                   s.optional};
}

template <class P>
inline P attr(int id) {
  using Q = __remove_cv(__remove_reference_t(P));
  using E = typename metal::vinfo<Q>::elem;
  constexpr int lanes = metal::vinfo<Q>::lanes;
  static_assert(__is_integral(E) && lanes <= 3, "dispatch attributes are uint or ushort scalars or vectors");
  const unsigned* v = T->a[id];
  if constexpr (lanes == 1) {
    return static_cast<E>(v[0]);
  } else if constexpr (lanes == 2) {
    return Q{static_cast<E>(v[0]), static_cast<E>(v[1])};
  } else {
    return Q{static_cast<E>(v[0]), static_cast<E>(v[1]), static_cast<E>(v[2])};
  }
}

// Host-sized threadgroup memory ([[threadgroup(k)]]): one allocation per group, poisoned
// and guarded like a kernel-scope threadgroup array.
inline void* tg_param(int k) {
  static const char* const names[kMaxThreadgroupParams] = {
      "[[threadgroup(0)]]", "[[threadgroup(1)]]", "[[threadgroup(2)]]", "[[threadgroup(3)]]",
      "[[threadgroup(4)]]", "[[threadgroup(5)]]", "[[threadgroup(6)]]", "[[threadgroup(7)]]"};
  return tg_alloc(-1 - k, L->tg_params[k], names[k]);
}

template <class P>
inline P arg(void** bufs, Spec s) {
  if constexpr (__is_pointer(__remove_reference_t(P))) {
    if (s.kind == kThreadgroupParam) return (P)tg_param(s.index);
    return (P)bufs[s.index];
  } else if constexpr (__is_reference(P)) {
    return *(__remove_reference_t(P)*)bufs[s.index];
  } else {
    return attr<P>(s.index);
  }
}

template <class T, T... I>
struct seq {};

template <class... P, int... I>
inline void invoke(void (*f)(P...), void** bufs, const Spec* spec, seq<int, I...>) {
  f(arg<P>(bufs, spec[I])...);
}

template <class... P>
inline void invoke(void (*f)(P...), void** bufs, const Spec* spec) {
  invoke(f, bufs, spec, __make_integer_seq<seq, int, sizeof...(P)>{});
}

template <class... P, int... I>
inline void describe_all(void (*)(P...), const Spec* spec, ParamInfo* out, seq<int, I...>) {
  ((out[I] = describe<P>(spec[I])), ...);
}

template <class... P>
constexpr int arity(void (*)(P...)) {
  return sizeof...(P);
}

template <class... P>
inline void describe_all(void (*f)(P...), const Spec* spec, ParamInfo* out) {
  describe_all(f, spec, out, __make_integer_seq<seq, int, sizeof...(P)>{});
}

// The numbers the host must agree on, by name; abi.py mirrors them and checks a built library.
struct AbiValue {
  const char* name;
  long value;
};
inline constexpr AbiValue kAbi[] = {
    {"ParamKind.BUFFER", kBuffer},
    {"ParamKind.ATTRIBUTE", kAttribute},
    {"ParamKind.THREADGROUP", kThreadgroupParam},
    {"TypeCode.OTHER", kOther},
    {"TypeCode.FLOAT", kFloat},
    {"TypeCode.HALF", kHalf},
    {"TypeCode.BFLOAT", kBFloat},
    {"TypeCode.BOOL", kBool},
    {"TypeCode.CHAR", kChar},
    {"TypeCode.UCHAR", kUChar},
    {"TypeCode.SHORT", kShort},
    {"TypeCode.USHORT", kUShort},
    {"TypeCode.INT", kInt},
    {"TypeCode.UINT", kUInt},
    {"TypeCode.LONG", kLong},
    {"TypeCode.ULONG", kULong},
    {"LaunchFlag.FIBERS", kFibers},
    {"LaunchFlag.FLIP_SCHEDULE", kFlipSchedule},
    {"LaunchFlag.STRICT", kStrict},
    {"Status.OK", kOk},
    {"Status.ERROR", kError},
    {"Status.NEEDS_FIBERS", kNeedsFibers},
    {"SIMD_WIDTH", kSimdWidth},
    {"MAX_THREADS_PER_THREADGROUP", kMaxThreadsPerGroup},
    {"MAX_THREADGROUP_MEMORY", (long)kMaxThreadgroupMemory},
    {"MAX_ATOMIC_RANGES", kMaxAtomicRanges},
    {"MAX_THREADGROUP_PARAMS", kMaxThreadgroupParams},
    {"NUM_ATTRIBUTES", kNumAttrs},
    {"POISON", kPoison},
    {"PARAM_INFO_BYTES", (long)sizeof(ParamInfo)},
};

}  // namespace mpsk_rt

#pragma clang attribute pop

extern "C" {
[[noreturn]] inline __attribute__((used)) void __ubsan_handle_type_mismatch_v1(mpsk_rt::UbsanMismatch* d,
                                                                                 unsigned long p) {
  mpsk_rt::misaligned(d, p);
}
[[noreturn]] inline __attribute__((used)) void __ubsan_handle_type_mismatch_v1_abort(mpsk_rt::UbsanMismatch* d,
                                                                                       unsigned long p) {
  mpsk_rt::misaligned(d, p);
}
}
