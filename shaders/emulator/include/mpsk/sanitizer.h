// Checked memory accesses: the instrumented build of a kernel (toolchain.py, `instrumented=True`).
//
// That build is compiled with -fsanitize=kernel-address and every address space generic, so clang
// calls the __asan_* functions below before every load and store of kernel code (and for memcpy,
// memset and memmove), with the address and size. Kernel-address links no runtime: these are
// the whole sanitizer. Each access is classified against the launch's range table (every staged
// argument: its bytes, index, element size and address space, set by the host with
// mpsk_san_configure before each launch), the group's threadgroup arena, and the memory that is
// the calling thread's own (its stack, this library's image and thread-local block, the thread
// table). An access that is none of these is outside every buffer, at whatever distance: the
// launch stops with an error naming the nearest argument and element, before the access is made.
//
// Also per access, as the host asks: counts of accesses and bytes per address space (the cost
// model's counters), reads of bytes never written (initcheck: a bit per byte of each staging and
// of the arena), and device bytes one thread reads or writes after another thread wrote them
// with no barrier between (racecheck: the last writer of each byte, as a segment and thread).
// The runtime itself and the atomics are not instrumented (atomics report through san_atomic).
#pragma once

#pragma clang attribute push(__attribute__((no_sanitize("kernel-address"))), apply_to = function)

namespace mpsk_rt {

#ifndef MPSK_INSTRUMENTED

inline void san_launch_begin() {}
inline void san_group_begin() {}
inline void san_epoch() {}
inline void san_atomic(const void*, unsigned long) {}

#else

namespace san {

// glibc's <link.h> (which clashes with the Metal types), the part used here: where this library's
// image and this thread's block of its thread-locals are.
struct Phdr {
  unsigned p_type, p_flags;
  unsigned long p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align;
};
struct PhdrInfo {
  unsigned long dlpi_addr;
  const char* dlpi_name;
  const Phdr* dlpi_phdr;
  unsigned short dlpi_phnum;
  unsigned long long dlpi_adds, dlpi_subs;
  unsigned long dlpi_tls_modid;
  void* dlpi_tls_data;
};
constexpr unsigned kPtLoad = 1, kPtTls = 7;
extern "C" int dl_iterate_phdr(int (*callback)(PhdrInfo*, unsigned long, void*), void* data);

// One staged argument; mirrored by shaders/emulator/sanitizer.py (RangeStruct).
struct Range {
  unsigned long lo, hi;   // the argument's bytes
  unsigned long base;     // byte 0 of its staging: the origin of the shadows below
  unsigned char* init;    // a bit per byte of the staging (1: written), or null
  unsigned long* writer;  // per byte of the staging: last writer's token (0: none), or null
  int index;              // buffer index
  int elem_size;          // bytes of one element
  int space;              // 1 device, 2 constant
  int uninitialized;      // its bytes start unwritten (the host did not initialize them)
  int read_only;          // declared const (or constant): a write is never meant for it
  int reserved;
};

enum Check : int { kInitcheck = 1, kRacecheck = 2 };
enum Space : int { kDevice = 0, kConstant = 1, kThreadgroup = 2 };
// Counter slots, in the order mpsk_san_counts writes them (sanitizer.py's COUNTER_NAMES).
enum Counter : int {
  kLoads = 0,      // + 4 * space
  kLoadBytes = 1,  // + 4 * space
  kStores = 2,     // + 4 * space
  kStoreBytes = 3, // + 4 * space
  kAtomics = 12,
  kAtomicBytes = 13,
  kNumCounters = 14,
};
constexpr int kMaxRanges = 64;
constexpr unsigned long kTokenThreads = 2048;  // token = segment * kTokenThreads + thread + 1

struct State {
  Range ranges[kMaxRanges];
  int nranges = 0;
  int checks = 0;
  int last = 0;  // the range hit last: tried first
  unsigned long counts[kNumCounters];
  unsigned long segment = 0;        // advances at each group start and each barrier release
  unsigned long group_segment = 0;  // the current group's first segment
  unsigned char tg_init[kArenaBytes / 8 + 1];
  bool module_known = false;
  unsigned long image_lo = 0, image_hi = 0, tls_lo = 0, tls_hi = 0;
};
inline thread_local State S;

inline int find_module(PhdrInfo* info, unsigned long, void* data) {
  State& s = *static_cast<State*>(data);
  const unsigned long self = (unsigned long)&find_module;
  unsigned long lo = ~0ul, hi = 0, tls = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const Phdr& p = info->dlpi_phdr[i];
    if (p.p_type == kPtLoad) {
      lo = info->dlpi_addr + p.p_vaddr < lo ? info->dlpi_addr + p.p_vaddr : lo;
      hi = info->dlpi_addr + p.p_vaddr + p.p_memsz > hi ? info->dlpi_addr + p.p_vaddr + p.p_memsz : hi;
    } else if (p.p_type == kPtTls) {
      tls = p.p_memsz;
    }
  }
  if (self < lo || self >= hi) return 0;
  s.image_lo = lo;
  s.image_hi = hi;
  s.tls_lo = (unsigned long)info->dlpi_tls_data;
  s.tls_hi = s.tls_lo ? s.tls_lo + tls : 0;
  return 1;
}

inline const char* space_name(int space) { return space == 2 ? "constant" : "device"; }

inline unsigned thread_index() { return T ? T->a[thread_index_in_threadgroup][0] : 0; }

[[noreturn]] inline void out_of_bounds(unsigned long a, unsigned long n, bool write) {
  State& s = S;
  const char* what = write ? "write" : "read";
  if (s.nranges == 0)
    trap("out-of-bounds %s of %lu bytes at 0x%lx, outside every buffer (the kernel has none bound), by thread %u "
         "of %s",
         what, n, a, thread_index(), group_str());
  const Range* best = &s.ranges[0];
  unsigned long best_d = ~0ul;
  bool writable = false;
  for (int i = 0; i < s.nranges; ++i) writable |= !s.ranges[i].read_only;
  for (int i = 0; i < s.nranges; ++i) {
    const Range& r = s.ranges[i];
    if (write && writable && r.read_only) continue;  // a write was meant for a writable buffer
    const unsigned long d = a < r.lo ? r.lo - a : (a + n > r.hi ? a + n - r.hi : 0);
    if (d < best_d) best_d = d, best = &r;
  }
  const Range& r = *best;
  const unsigned long es = r.elem_size > 0 ? (unsigned long)r.elem_size : 1ul;
  const unsigned long count = (r.hi - r.lo) / es;
  if (a < r.lo) {
    const unsigned long before = r.lo - a;
    trap("out-of-bounds %s of %s buffer %d (the nearest%s): element -%lu, %lu bytes before its first of %lu "
         "elements, by thread %u of %s",
         what, space_name(r.space), r.index, write && writable ? " writable one" : "", (before + es - 1) / es, before,
         count, thread_index(), group_str());
  }
  trap("out-of-bounds %s of %s buffer %d (the nearest%s): element %lu of %lu (%lu bytes past its end), by thread "
       "%u of %s",
       what, space_name(r.space), r.index, write && writable ? " writable one" : "", (a - r.lo) / es, count,
       a + n - r.hi, thread_index(), group_str());
}

inline bool bits_all(const unsigned char* map, unsigned long from, unsigned long n, unsigned long* first) {
  for (unsigned long k = from; k < from + n; ++k)
    if (!((map[k >> 3] >> (k & 7)) & 1)) {
      *first = k;
      return false;
    }
  return true;
}

inline void bits_set(unsigned char* map, unsigned long from, unsigned long n) {
  for (unsigned long k = from; k < from + n; ++k) map[k >> 3] |= (unsigned char)(1u << (k & 7));
}

inline void device_access(Range& r, unsigned long a, unsigned long n, bool write) {
  State& s = S;
  const int space = r.space == 2 ? kConstant : kDevice;
  s.counts[(write ? kStores : kLoads) + 4 * space] += 1;
  s.counts[(write ? kStoreBytes : kLoadBytes) + 4 * space] += n;
  const unsigned long off = a - r.base;
  const unsigned long es = r.elem_size > 0 ? (unsigned long)r.elem_size : 1ul;
  if (r.init && (s.checks & kInitcheck)) {
    unsigned long first;
    if (write) {
      bits_set(r.init, off, n);
    } else if (!bits_all(r.init, off, n, &first)) {
      trap("read of uninitialized %s memory: buffer %d element %lu (byte %lu of it) was never written in this "
           "launch and the host did not initialize it; by thread %u of %s",
           space_name(r.space), r.index, (first + r.base - r.lo) / es, first + r.base - r.lo, thread_index(),
           group_str());
    }
  }
  if (r.writer && (s.checks & kRacecheck)) {
    const unsigned long me = thread_index();
    for (unsigned long k = off; k < off + n; ++k) {
      const unsigned long tok = r.writer[k];
      if (tok) {
        const unsigned long seg = tok / kTokenThreads, who = tok % kTokenThreads - 1;
        const bool same_phase = seg == s.segment;
        if ((same_phase && who != me) || seg < s.group_segment) {
          char by[96];
          if (same_phase)
            snprintf(by, sizeof by, "thread %lu of the same threadgroup wrote it with no barrier between", who);
          else
            snprintf(by, sizeof by, "a thread of another threadgroup of this launch wrote it");
          trap("data race on device buffer %d element %lu: thread %lu of %s %s it after %s (a non-atomic "
               "read-modify-write, or a write by several threads: use an atomic, or a barrier)",
               r.index, (k + r.base - r.lo) / es, me, group_str(), write ? "writes" : "reads", by);
        }
      }
      if (write) r.writer[k] = s.segment * kTokenThreads + me + 1;
    }
  }
}

inline void threadgroup_access(unsigned long a, unsigned long n, bool write) {
  State& s = S;
  const unsigned long base = (unsigned long)arena();
  const unsigned long off = a - base;
  s.counts[(write ? kStores : kLoads) + 4 * kThreadgroup] += 1;
  s.counts[(write ? kStoreBytes : kLoadBytes) + 4 * kThreadgroup] += n;
  const TgVar* var = nullptr;
  for (int i = 0; i < L->ntg; ++i)
    if (off >= L->tg[i].off && off + n <= L->tg[i].off + L->tg[i].size) var = &L->tg[i];
  if (!var) {
    const TgVar* near = nullptr;
    unsigned long best = ~0ul;
    for (int i = 0; i < L->ntg; ++i) {
      const TgVar& v = L->tg[i];
      const unsigned long d = off < v.off ? v.off - off : (off + n > v.off + v.size ? off + n - v.off - v.size : 0);
      if (d < best) best = d, near = &v;
    }
    if (!near)
      trap("out-of-bounds threadgroup %s of %lu bytes: the group has no threadgroup memory; by thread %u of %s",
           write ? "write" : "read", n, thread_index(), group_str());
    const long at = (long)off - (long)near->off;
    trap("out-of-bounds threadgroup %s of %lu bytes at byte %ld of threadgroup array '%s' (%lu bytes), by thread "
         "%u of %s",
         write ? "write" : "read", n, at, near->name, near->size, thread_index(), group_str());
  }
  if (s.checks & kInitcheck) {
    unsigned long first;
    if (write) {
      bits_set(s.tg_init, off, n);
    } else if (!bits_all(s.tg_init, off, n, &first)) {
      trap("read of uninitialized threadgroup memory: byte %lu of threadgroup array '%s' (element %lu of %lu-byte "
           "elements) was never written in %s; by thread %u",
           first - var->off, var->name, (first - var->off) / n, n, group_str(), thread_index());
    }
  }
}

inline void access(unsigned long a, unsigned long n, bool write) {
  if (!L) return;  // not inside a launch
  State& s = S;
  {
    Range& r = s.ranges[s.last];
    if (s.last < s.nranges && a >= r.lo && a + n <= r.hi) return device_access(r, a, n, write);
  }
  for (int i = 0; i < s.nranges; ++i) {
    Range& r = s.ranges[i];
    if (a >= r.lo && a + n <= r.hi) {
      s.last = i;
      return device_access(r, a, n, write);
    }
  }
  const unsigned long sp = (unsigned long)__builtin_frame_address(0);
  if (a - sp < kFiberStack) return;  // the calling thread's own stack
  if (a - (unsigned long)arena() < kArenaBytes) return threadgroup_access(a, n, write);
  const unsigned long pool = (unsigned long)thread_pool();
  if (a - pool < sizeof(Thread) * kMaxThreadsPerGroup) return;
  if (!s.module_known) {
    dl_iterate_phdr(find_module, &s);
    s.module_known = true;
  }
  if (a - s.image_lo < s.image_hi - s.image_lo) return;  // this library's constants and statics
  if (a - s.tls_lo < s.tls_hi - s.tls_lo) return;        // its thread-local block
  out_of_bounds(a, n, write);
}

}  // namespace san

inline void san_launch_begin() {
  san::State& s = san::S;
  for (unsigned long& c : s.counts) c = 0;
  s.segment = 0;
  s.group_segment = 0;
  s.last = 0;
}

inline void san_group_begin() {
  san::State& s = san::S;
  s.group_segment = ++s.segment;
  if (s.checks & san::kInitcheck) memset(s.tg_init, 0, sizeof s.tg_init);
}

inline void san_epoch() { ++san::S.segment; }

// An atomic operation on `n` bytes at `p`: checked for bounds and counted, never a race; the bytes
// count as written (its value is defined from then on).
inline void san_atomic(const void* p, unsigned long n) {
  if (!L) return;
  san::State& s = san::S;
  const unsigned long a = (unsigned long)p;
  for (int i = 0; i < s.nranges; ++i) {
    san::Range& r = s.ranges[i];
    if (a >= r.lo && a + n <= r.hi) {
      s.counts[san::kAtomics] += 1;
      s.counts[san::kAtomicBytes] += n;
      if (r.init) san::bits_set(r.init, a - r.base, n);
      if (r.writer)
        for (unsigned long k = a - r.base; k < a - r.base + n; ++k) r.writer[k] = 0;
      return;
    }
  }
  if (a - (unsigned long)arena() < kArenaBytes) {
    s.counts[san::kAtomics] += 1;
    s.counts[san::kAtomicBytes] += n;
    san::bits_set(s.tg_init, a - (unsigned long)arena(), n);
    return;
  }
  san::access(a, n, true);  // reports it out of bounds (or lets a thread-private one pass)
}

#endif  // MPSK_INSTRUMENTED

}  // namespace mpsk_rt

#ifdef MPSK_INSTRUMENTED
#define MPSK_SAN_ACCESS(bytes, is_write)                                                           \
  extern "C" __attribute__((used)) void __asan_load##bytes##_noabort(unsigned long a) {         \
    mpsk_rt::san::access(a, bytes, false);                                                       \
  }                                                                                              \
  extern "C" __attribute__((used)) void __asan_store##bytes##_noabort(unsigned long a) {        \
    mpsk_rt::san::access(a, bytes, true);                                                        \
  }
MPSK_SAN_ACCESS(1, 0)
MPSK_SAN_ACCESS(2, 0)
MPSK_SAN_ACCESS(4, 0)
MPSK_SAN_ACCESS(8, 0)
MPSK_SAN_ACCESS(16, 0)
#undef MPSK_SAN_ACCESS
extern "C" __attribute__((used)) void __asan_loadN_noabort(unsigned long a, unsigned long n) {
  mpsk_rt::san::access(a, n, false);
}
extern "C" __attribute__((used)) void __asan_storeN_noabort(unsigned long a, unsigned long n) {
  mpsk_rt::san::access(a, n, true);
}
extern "C" __attribute__((used)) void* __asan_memcpy(void* d, const void* s, unsigned long n) {
  if (n) {
    mpsk_rt::san::access((unsigned long)s, n, false);
    mpsk_rt::san::access((unsigned long)d, n, true);
  }
  return __builtin_memcpy(d, s, n);
}
extern "C" __attribute__((used)) void* __asan_memmove(void* d, const void* s, unsigned long n) {
  if (n) {
    mpsk_rt::san::access((unsigned long)s, n, false);
    mpsk_rt::san::access((unsigned long)d, n, true);
  }
  return __builtin_memmove(d, s, n);
}
extern "C" __attribute__((used)) void* __asan_memset(void* d, int c, unsigned long n) {
  if (n) mpsk_rt::san::access((unsigned long)d, n, true);
  return __builtin_memset(d, c, n);
}

// Called before noreturn calls (the runtime's longjmp out of a failed thread): nothing to unpoison.
extern "C" __attribute__((used)) void __asan_handle_no_return() {}

// The host's range table for the next launch on this thread, the checks to make (san::Check), and
// the counters of the last one.
MPSK_EXPORT int mpsk_san_configure(const mpsk_rt::san::Range* ranges, int n, int checks) {
  mpsk_rt::san::State& s = mpsk_rt::san::S;
  if (n < 0 || n > mpsk_rt::san::kMaxRanges) return 0;
  s.nranges = n;
  s.checks = checks;
  s.last = 0;
  for (int i = 0; i < n; ++i) {
    s.ranges[i] = ranges[i];
    const mpsk_rt::san::Range& r = ranges[i];
    if (r.init && !r.uninitialized) mpsk_rt::san::bits_set(r.init, r.lo - r.base, r.hi - r.lo);
  }
  return 1;
}

MPSK_EXPORT int mpsk_san_counts(unsigned long* out, int max) {
  int i = 0;
  for (; i < mpsk_rt::san::kNumCounters && i < max; ++i) out[i] = mpsk_rt::san::S.counts[i];
  return i;
}
#endif  // MPSK_INSTRUMENTED

#pragma clang attribute pop
