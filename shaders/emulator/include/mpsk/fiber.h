// Fibers for emulated GPU threads.
//
// On x86-64 a switch saves the callee-saved registers on the current stack and
// swaps stack pointers: a few nanoseconds, where swapcontext makes a signal-mask
// system call every time. Elsewhere ucontext does the same job, slower.
#pragma once

#include <ucontext.h>

namespace mpsk_rt {

#if defined(__x86_64__)

extern "C" void mpsk_fiber_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .hidden mpsk_fiber_switch
    .type mpsk_fiber_switch, @function
mpsk_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size mpsk_fiber_switch, .-mpsk_fiber_switch
)");

struct Fiber {
  void* sp = nullptr;
};

// Prepares `f` to start in `entry` (which must never return) on the given stack.
inline void fiber_init(Fiber& f, unsigned char* stack, unsigned long size, void (*entry)()) {
  auto top = reinterpret_cast<unsigned long>(stack + size) & ~15ul;
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                          // entry's return address slot: keeps the ABI alignment
  *--sp = reinterpret_cast<void*>(entry);   // where the first switch "returns" to
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12-r15
  f.sp = sp;
}

inline void fiber_switch(Fiber& from, Fiber& to) { mpsk_fiber_switch(&from.sp, to.sp); }

#else

struct Fiber {
  ucontext_t ctx;
};

inline void fiber_init(Fiber& f, unsigned char* stack, unsigned long size, void (*entry)()) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = size;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, entry, 0);
}

inline void fiber_switch(Fiber& from, Fiber& to) { swapcontext(&from.ctx, &to.ctx); }

#endif

}  // namespace mpsk_rt
