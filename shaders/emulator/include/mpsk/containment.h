// Containment of a launch: whatever the kernel does, the host process survives it.
//
// While a launch runs, the signals a kernel can bring on itself end the launch
// with an error instead of the process: SIGSEGV and SIGBUS (a pointer outside
// every buffer, which staging's guard pages turn every out-of-bounds 32-bit
// index into, or a fiber stack overflow), SIGFPE (integer division by zero),
// SIGILL (__builtin_trap) and SIGABRT. So do a watchdog timer aimed at the
// launching thread (the host's time limit) and, when the host asks (a launch on
// Python's main thread), SIGINT, which the host then hands back to Python. The
// handler runs on an alternate stack, records what happened (signal, address,
// read or write) for the host to read with mpsk_last_fault, and jumps back to
// the launch, which abandons its fibers and returns an error.
//
// The handlers are installed once per library and stay: a signal that finds no
// launch of this library on its thread is passed to the handler that was there
// before (another library's, Python's, or the default action). Restoring them at
// the end of each launch would leave a launch still running in another thread
// unprotected, since launches overlap when several threads call kernels.
#pragma once

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

namespace mpsk_rt {

// What ended the last launch of this thread early, for the host.
struct Fault {
  int sig;             // 0: nothing
  unsigned long addr;  // the faulting address (SIGSEGV, SIGBUS)
  int write;           // 1 a write, 0 a read, -1 not known (only x86-64 says)
};

inline thread_local sigjmp_buf* fault_escape = nullptr;
inline thread_local Fault last_fault{};
// Set by the host before each launch (mpsk_contain).
inline thread_local double time_limit_s = 0;  // 0: no watchdog
inline thread_local bool catch_sigint = false;
// The thread whose launch a SIGINT ends, while one is armed (process-wide: SIGINT goes to the process).
inline pthread_t sigint_thread;
inline volatile sig_atomic_t sigint_armed = 0;

// The watchdog's signal: a real-time one, so it cannot be mistaken for the user's SIGALRM.
inline int watchdog_signal() { return SIGRTMAX - 7; }

inline constexpr int kContainedSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
constexpr int kNumContained = sizeof(kContainedSignals) / sizeof(kContainedSignals[0]);

// The handlers there before this library's (one per contained signal, then the watchdog's).
inline struct sigaction chained[kNumContained + 1];

// A signal outside this library's launches: what would have happened without it.
inline void pass_on(int sig, siginfo_t* info, void* context) {
  struct sigaction* prev = sig == watchdog_signal() ? &chained[kNumContained] : nullptr;
  for (int i = 0; i < kNumContained; ++i)
    if (kContainedSignals[i] == sig) prev = &chained[i];
  if (prev && (prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction) {
    prev->sa_sigaction(sig, info, context);
    return;
  }
  if (prev && !(prev->sa_flags & SA_SIGINFO) && prev->sa_handler != SIG_DFL) {
    if (prev->sa_handler != SIG_IGN) prev->sa_handler(sig);
    return;
  }
  if (sig == watchdog_signal()) return;  // a late tick after a launch ended
  signal(sig, SIG_DFL);
  raise(sig);
}

inline void on_signal(int sig, siginfo_t* info, void* context) {
  if (!fault_escape) {
    if (sig == SIGINT) {
      if (sigint_armed) pthread_kill(sigint_thread, SIGINT);  // to the launching thread
      return;
    }
    pass_on(sig, info, context);
    return;
  }
  last_fault.sig = sig;
  last_fault.addr = sig == SIGSEGV || sig == SIGBUS ? reinterpret_cast<unsigned long>(info->si_addr) : 0;
  last_fault.write = -1;
#if defined(__x86_64__)
  if (sig == SIGSEGV && context) {
    // The page-fault error code: bit 1 is set for a write.
    last_fault.write = (static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
  }
#endif
  siglongjmp(*fault_escape, sig);
}

// Records the signal stack so it is unmapped when its thread ends (runtime.h, thread_memory).
inline void remember_signal_stack(void* stack);
constexpr unsigned long kSignalStack = 64 * 1024;

inline void ensure_signal_stack() {
  stack_t current;
  if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
  stack_t ss;
  ss.ss_sp = mmap(nullptr, kSignalStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ss.ss_size = kSignalStack;
  ss.ss_flags = 0;
  if (sigaltstack(&ss, nullptr) == 0) remember_signal_stack(ss.ss_sp);
}

// Arms the handlers (installed at the first launch) and the watchdog for one launch; the
// watchdog and SIGINT are undone at its end.
struct FaultGuard {
  static struct sigaction handler() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    return sa;
  }

  struct sigaction old_int;
  sigset_t old_mask;
  timer_t timer;
  bool timed = false, interruptible = false;

  explicit FaultGuard(sigjmp_buf* env) {
    ensure_signal_stack();
    last_fault = Fault{};
    static pthread_once_t installed = PTHREAD_ONCE_INIT;
    pthread_once(&installed, [] {
      struct sigaction sa = handler();
      for (int i = 0; i < kNumContained; ++i) sigaction(kContainedSignals[i], &sa, &chained[i]);
      sigaction(watchdog_signal(), &sa, &chained[kNumContained]);
    });
    struct sigaction sa = handler();
    sigset_t mine;
    sigemptyset(&mine);
    for (int i = 0; i < kNumContained; ++i) sigaddset(&mine, kContainedSignals[i]);
    sigaddset(&mine, watchdog_signal());
    interruptible = catch_sigint;
    if (interruptible) {
      sigaction(SIGINT, &sa, &old_int);
      sigaddset(&mine, SIGINT);
      sigint_thread = pthread_self();
      sigint_armed = 1;
    }
    pthread_sigmask(SIG_UNBLOCK, &mine, &old_mask);  // a thread that blocks them still gets them
    fault_escape = env;
    if (time_limit_s > 0) {
      struct sigevent ev;
      memset(&ev, 0, sizeof ev);
      ev.sigev_notify = SIGEV_THREAD_ID;
      ev.sigev_signo = watchdog_signal();
      ev._sigev_un._tid = gettid();
      if (timer_create(CLOCK_MONOTONIC, &ev, &timer) == 0) {
        timed = true;
        struct itimerspec when;
        memset(&when, 0, sizeof when);
        when.it_value.tv_sec = (time_t)time_limit_s;
        when.it_value.tv_nsec = (long)((time_limit_s - (double)(time_t)time_limit_s) * 1e9);
        if (when.it_value.tv_sec == 0 && when.it_value.tv_nsec == 0) when.it_value.tv_nsec = 1;
        when.it_interval.tv_nsec = 100 * 1000 * 1000;  // again, should a tick ever be missed
        timer_settime(timer, 0, &when, nullptr);
      }
    }
  }
  ~FaultGuard() {
    // In this order: a tick or SIGINT arriving meanwhile finds no launch to end and is dropped
    // (the timer's ticks reach this thread before timer_delete returns).
    fault_escape = nullptr;
    if (timed) timer_delete(timer);
    if (interruptible) {
      sigint_armed = 0;
      sigaction(SIGINT, &old_int, nullptr);
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  }
};

// What ended a launch, for its error message (the host words the details: guard pages, time limit).
inline const char* signal_reason(int sig) {
  if (sig == SIGSEGV || sig == SIGBUS)
    return "a pointer outside every buffer, a misaligned access, or a stack overflow";
  if (sig == SIGFPE) return "an integer division by zero (or INT_MIN / -1)";
  if (sig == SIGILL) return "a trap instruction (__builtin_trap) or an illegal instruction";
  if (sig == SIGABRT) return "abort() was called";
  if (sig == SIGINT) return "interrupted (SIGINT)";
  if (sig == watchdog_signal()) return "it ran longer than the time limit";
  return "an unexpected signal";
}

inline const char* signal_name(int sig) {
  switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGINT: return "SIGINT";
    default: return sig == watchdog_signal() ? "watchdog" : "signal";
  }
}

}  // namespace mpsk_rt

// The host's settings for the calling thread's next launches: the watchdog's limit in seconds
// (0: none) and whether SIGINT ends them.
extern "C" __attribute__((visibility("default"))) void mpsk_contain(double seconds, int sigint) {
  mpsk_rt::time_limit_s = seconds;
  mpsk_rt::catch_sigint = sigint != 0;
}

// What ended the calling thread's last launch: the signal (0 if none), and for a fault its
// address and whether it was a write (1), a read (0) or not known (-1).
extern "C" __attribute__((visibility("default"))) int mpsk_last_fault(unsigned long* addr, int* write) {
  *addr = mpsk_rt::last_fault.addr;
  *write = mpsk_rt::last_fault.write;
  return mpsk_rt::last_fault.sig;
}
