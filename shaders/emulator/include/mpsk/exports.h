// The C functions every emulated library exports besides its entry table: what the host
// reads after a launch, and the ABI's numbers by name (checked by abi.py).
#pragma once

#define MPSK_EXPORT extern "C" __attribute__((visibility("default")))

MPSK_EXPORT const char* mpsk_attr_name(int a) {
  return a >= 0 && a < mpsk_rt::kNumAttrs ? mpsk_rt::kAttrNames[a] : nullptr;
}

MPSK_EXPORT int mpsk_atomic_ranges(unsigned long* out, double* scale, int max) {
  const int n = mpsk_rt::num_atomic_ranges;
  for (int i = 0; i < n && i < max; ++i) {
    out[2 * i] = mpsk_rt::atomic_ranges[i][0];
    out[2 * i + 1] = mpsk_rt::atomic_ranges[i][1];
    scale[i] = mpsk_rt::atomic_scale[i];
  }
  return n;
}

MPSK_EXPORT const char* mpsk_undefined_note() { return mpsk_rt::undefined_note; }

// The host's fiber-stack pool: `provider(i)` returns the calling thread's stack i (kFiberStack
// bytes above a guard page), the same for every library.
MPSK_EXPORT void mpsk_set_stack_provider(unsigned char* (*provider)(int)) { mpsk_rt::stack_provider = provider; }

// Bytes of one fiber stack (the host sizes its pool with it).
MPSK_EXPORT unsigned long mpsk_fiber_stack_bytes() { return mpsk_rt::kFiberStack; }

// 1 and *value set when `name` is an ABI number the runtime defines, else 0.
MPSK_EXPORT int mpsk_abi_value(const char* name, long* value) {
  for (const auto& a : mpsk_rt::kAbi)
    if (__builtin_strcmp(a.name, name) == 0) {
      *value = a.value;
      return 1;
    }
  return 0;
}
