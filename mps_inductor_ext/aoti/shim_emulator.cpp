// The aoti_torch_mps_* C functions of torch's shim_mps.h, over the CPU emulator of Metal.
//
// libtorch has these functions only on macOS. This library defines them for a Linux process so
// that AOTInductor-generated code (torch/_inductor/codegen/cpp_wrapper_mps.py) runs here. It holds
// no state of its own beyond opaque handles: every call is forwarded to a Python callback that
// mps_inductor_ext.aoti.emulated_shim installs (mpsk_shim_install), which drives the same shader
// runtime the tests verify (ShaderLibrary(backend="cpu") and its KernelFunction). So there is one
// launch path, and the emulator's checks (bounds, schedule, argument kinds) apply to AOTI code too.
//
// Callbacks are ctypes CFUNCTYPE objects: ctypes takes the GIL itself (PyGILState_Ensure) around
// each one, so a call may come from any thread, holding the GIL or not. Errors never cross this
// boundary as exceptions: a callback returns non-zero and has stored its message with
// mpsk_shim_set_error; the shim function then returns AOTI_TORCH_FAILURE and the message is
// available from mpsk_shim_last_error() on the same thread.
//
// C-style code with no C++ standard library, so it builds with -nostdlib++ (no libc++ build).
// Its declarations are checked against the installed torch's shim_mps.h on every build by a
// -fsyntax-only pass with MPSK_SHIM_CHECK_HEADER defined (a signature mismatch is a compile error).

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef MPSK_SHIM_CHECK_HEADER
#include <torch/csrc/inductor/aoti_torch/c/shim_mps.h>
#define MPSK_EXPORT extern "C" __attribute__((visibility("default")))
#else
struct AOTIMetalKernelFunctionOpaque;
struct AOTIMetalShaderLibraryOpaque;
struct AtenTensorOpaque;
typedef AOTIMetalKernelFunctionOpaque* AOTIMetalKernelFunctionHandle;
typedef AOTIMetalShaderLibraryOpaque* AOTIMetalShaderLibraryHandle;
typedef AtenTensorOpaque* AtenTensorHandle;
typedef int32_t AOTITorchError;
typedef void (*aoti_torch_mps_command_block_callback_t)(AOTIMetalKernelFunctionHandle func, void* user_data);
#define AOTI_TORCH_SUCCESS 0
#define AOTI_TORCH_FAILURE 1
#define MPSK_EXPORT extern "C" __attribute__((visibility("default")))
#endif

#define MPSK_SHIM_ABI_VERSION 1

// Handles are ids the Python side hands out (never reused, never 0), cast to pointers.
struct MpskShimCallbacks {
  int32_t version;  // MPSK_SHIM_ABI_VERSION
  int32_t (*create_library)(const char* source, uint64_t* out_handle);
  int32_t (*delete_library)(uint64_t library);
  int32_t (*get_kernel)(uint64_t library, const char* name, uint64_t* out_handle);
  int32_t (*start_encoding)(uint64_t func);
  int32_t (*set_arg_tensor)(uint64_t func, uint32_t idx, void* tensor);
  int32_t (*set_arg_int)(uint64_t func, uint32_t idx, int64_t value);
  // group == NULL: the runtime's default group size.
  int32_t (*dispatch)(uint64_t func, const uint64_t* length, uint64_t ndim, const uint64_t* group);
  // Runs KernelFunction.run_command_block with a body that calls mpsk_shim_invoke_block.
  int32_t (*run_block)(uint64_t func, void* callback, void* user_data);
};

static MpskShimCallbacks g_callbacks;
static int g_installed;  // read and written with __atomic builtins

static int g_mac_faithful;  // read and written with __atomic builtins

static thread_local char t_error[4096];
static thread_local int t_block_depth;    // run_command_block nesting on this thread
static thread_local int t_block_failed;   // a call inside the innermost block failed

static void set_error(const char* message) {
  // Inside a command block the first failure is the cause; later ones are its consequences.
  if (t_block_depth > 0 && t_block_failed) return;
  if (t_block_depth > 0) t_block_failed = 1;
  size_t n = strlen(message);
  if (n >= sizeof(t_error)) n = sizeof(t_error) - 1;
  memcpy(t_error, message, n);
  t_error[n] = 0;
}

static const MpskShimCallbacks* callbacks() {
  if (__atomic_load_n(&g_installed, __ATOMIC_ACQUIRE)) return &g_callbacks;
  set_error(
      "the emulated MPS shim has no Python runtime installed (load it with "
      "mps_inductor_ext.aoti.emulated_shim.load(), and not after Python has begun shutting down)");
  return nullptr;
}

// A callback's status as an AOTITorchError; its message is already stored (mpsk_shim_set_error).
static AOTITorchError status(int32_t rc) {
  if (rc == 0) return AOTI_TORCH_SUCCESS;
  if (t_block_depth > 0) t_block_failed = 1;
  return AOTI_TORCH_FAILURE;
}

static AOTITorchError fail(const char* message) {
  set_error(message);
  return AOTI_TORCH_FAILURE;
}

// -- the package's own entry points ------------------------------------------------------------

// Installs (or, with NULL, removes) the Python callbacks. Returns 0, or 1 on an ABI mismatch.
MPSK_EXPORT int32_t mpsk_shim_install(const MpskShimCallbacks* cb) {
  if (cb == nullptr) {
    __atomic_store_n(&g_installed, 0, __ATOMIC_RELEASE);
    return 0;
  }
  if (cb->version != MPSK_SHIM_ABI_VERSION) return 1;
  __atomic_store_n(&g_installed, 0, __ATOMIC_RELEASE);
  g_callbacks = *cb;
  __atomic_store_n(&g_installed, 1, __ATOMIC_RELEASE);
  return 0;
}

MPSK_EXPORT int32_t mpsk_shim_abi_version() { return MPSK_SHIM_ABI_VERSION; }

// The message of the last failed call on this thread.
MPSK_EXPORT const char* mpsk_shim_last_error() { return t_error; }

// Called by the Python callbacks before they return non-zero.
MPSK_EXPORT void mpsk_shim_set_error(const char* message) { set_error(message ? message : "unknown error"); }

// Mac-faithful mode on (1) or off (0): failed calls inside a command block no longer fail the block.
MPSK_EXPORT void mpsk_shim_set_mac_faithful(int enabled) {
  __atomic_store_n(&g_mac_faithful, enabled ? 1 : 0, __ATOMIC_RELEASE);
}

// The body of a command block, called by the Python runtime from inside run_command_block.
MPSK_EXPORT void mpsk_shim_invoke_block(void* callback, uint64_t func, void* user_data) {
  reinterpret_cast<aoti_torch_mps_command_block_callback_t>(callback)(
      reinterpret_cast<AOTIMetalKernelFunctionHandle>(func), user_data);
}

// -- shim_mps.h ---------------------------------------------------------------------------------

static uint64_t id_of(const void* handle) { return (uint64_t)(uintptr_t)handle; }

MPSK_EXPORT AOTITorchError aoti_torch_mps_create_shader_library(
    const char* metal_shader_source, AOTIMetalShaderLibraryHandle* library_handle) {
  if (metal_shader_source == nullptr || library_handle == nullptr)
    return fail("aoti_torch_mps_create_shader_library: source and library_handle must not be NULL");
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  uint64_t id = 0;
  AOTITorchError err = status(cb->create_library(metal_shader_source, &id));
  if (err == AOTI_TORCH_SUCCESS) *library_handle = reinterpret_cast<AOTIMetalShaderLibraryHandle>((uintptr_t)id);
  return err;
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_delete_shader_library(AOTIMetalShaderLibraryHandle library_handle) {
  if (library_handle == nullptr) return fail("aoti_torch_mps_delete_shader_library: NULL library handle");
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  return status(cb->delete_library(id_of(library_handle)));
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_get_kernel_function(
    AOTIMetalShaderLibraryHandle library_handle, const char* kernel_name,
    AOTIMetalKernelFunctionHandle* function_handle) {
  if (library_handle == nullptr || kernel_name == nullptr || function_handle == nullptr)
    return fail("aoti_torch_mps_get_kernel_function: library_handle, kernel_name and function_handle must not be NULL");
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  uint64_t id = 0;
  AOTITorchError err = status(cb->get_kernel(id_of(library_handle), kernel_name, &id));
  if (err == AOTI_TORCH_SUCCESS) *function_handle = reinterpret_cast<AOTIMetalKernelFunctionHandle>((uintptr_t)id);
  return err;
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_start_encoding(AOTIMetalKernelFunctionHandle func) {
  if (func == nullptr) return fail("aoti_torch_mps_start_encoding: NULL kernel function handle");
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  return status(cb->start_encoding(id_of(func)));
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_set_arg_tensor(
    AOTIMetalKernelFunctionHandle func, unsigned idx, AtenTensorHandle tensor) {
  if (func == nullptr) return fail("aoti_torch_mps_set_arg_tensor: NULL kernel function handle");
  if (tensor == nullptr) return fail("aoti_torch_mps_set_arg_tensor: NULL tensor handle");
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  return status(cb->set_arg_tensor(id_of(func), idx, tensor));
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_set_arg_int(AOTIMetalKernelFunctionHandle func, unsigned idx, int64_t val) {
  if (func == nullptr) return fail("aoti_torch_mps_set_arg_int: NULL kernel function handle");
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  return status(cb->set_arg_int(id_of(func), idx, val));
}

static AOTITorchError dispatch(
    const char* what, AOTIMetalKernelFunctionHandle func, const uint64_t* length, size_t length_size,
    const uint64_t* group_size, size_t group_size_size, int has_group) {
  char message[256];
  if (func == nullptr) {
    strcpy(message, what);
    strcat(message, ": NULL kernel function handle");
    return fail(message);
  }
  if (length == nullptr || length_size < 1 || length_size > 3 || (has_group && group_size == nullptr)) {
    strcpy(message, what);
    strcat(message, ": length must point to 1 to 3 values (and group_size, when given, must not be NULL)");
    return fail(message);
  }
  if (has_group && group_size_size != length_size) {
    strcpy(message, what);
    strcat(message, ": length and group_size have different numbers of dimensions");
    return fail(message);
  }
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  return status(cb->dispatch(id_of(func), length, length_size, has_group ? group_size : nullptr));
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_dispatch_single(AOTIMetalKernelFunctionHandle func, uint64_t length) {
  return dispatch("aoti_torch_mps_dispatch_single", func, &length, 1, nullptr, 0, 0);
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_dispatch_single_with_group_size(
    AOTIMetalKernelFunctionHandle func, uint64_t length, uint64_t group_size) {
  return dispatch("aoti_torch_mps_dispatch_single_with_group_size", func, &length, 1, &group_size, 1, 1);
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_dispatch_array(
    AOTIMetalKernelFunctionHandle func, const uint64_t* length, size_t length_size) {
  return dispatch("aoti_torch_mps_dispatch_array", func, length, length_size, nullptr, 0, 0);
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_dispatch_array_with_group_size(
    AOTIMetalKernelFunctionHandle func, const uint64_t* length, size_t length_size, const uint64_t* group_size,
    size_t group_size_size) {
  return dispatch(
      "aoti_torch_mps_dispatch_array_with_group_size", func, length, length_size, group_size, group_size_size, 1);
}

// Runs the block through KernelFunction.run_command_block. Beyond the Mac's shim, it also returns
// AOTI_TORCH_FAILURE when any call inside the block failed (the generated code checks none of
// them), with the first failure's message.
MPSK_EXPORT AOTITorchError aoti_torch_mps_run_command_block(
    AOTIMetalKernelFunctionHandle func, aoti_torch_mps_command_block_callback_t callback, void* user_data) {
  if (func == nullptr || callback == nullptr)
    return fail("aoti_torch_mps_run_command_block: NULL kernel function handle or callback");
  const MpskShimCallbacks* cb = callbacks();
  if (!cb) return AOTI_TORCH_FAILURE;
  int outer_failed = t_block_failed;
  t_block_depth += 1;
  t_block_failed = 0;
  int32_t rc = cb->run_block(id_of(func), reinterpret_cast<void*>(callback), user_data);
  // A Mac's run_command_block fails only when the block itself throws: the shim calls inside it
  // return error codes that nothing sees unless the block checks them (the Mac-faithful mode).
  const int inner_counts = !__atomic_load_n(&g_mac_faithful, __ATOMIC_ACQUIRE);
  int failed = (t_block_failed && inner_counts) || rc != 0;
  t_block_depth -= 1;
  t_block_failed = outer_failed;
  if (failed && t_block_depth > 0) t_block_failed = 1;
  return failed ? AOTI_TORCH_FAILURE : AOTI_TORCH_SUCCESS;
}

// The generated code passes a std::function<void(AOTIMetalKernelFunctionHandle)>* as user_data.
// AOTInductor compiles models on Linux with g++ (torch._inductor.cpp_builder), i.e. against
// libstdc++, whose std::function (bits/std_function.h, unchanged since GCC 4.x) is
// { _Any_data functor (16 bytes); _Manager_type manager; _Invoker_type invoker }, with
// invoker(const _Any_data&, Args&&...) and manager == NULL when empty. This library is built
// without a C++ standard library, so it calls the invoker through that layout. A model built
// against libc++ would need the libc++ layout instead (see emulated_shim.py's docstring).
struct LibstdcxxFunction {
  void* functor[2];
  void* manager;
  void (*invoker)(const void* functor, AOTIMetalKernelFunctionHandle* arg);
};

MPSK_EXPORT void aoti_torch_mps_shared_callback(AOTIMetalKernelFunctionHandle func, void* user_data) {
  const LibstdcxxFunction* f = static_cast<const LibstdcxxFunction*>(user_data);
  if (f == nullptr || f->manager == nullptr || f->invoker == nullptr) {
    set_error("aoti_torch_mps_shared_callback: user_data is not a non-empty std::function");
    if (t_block_depth > 0) t_block_failed = 1;
    return;
  }
  AOTIMetalKernelFunctionHandle arg = func;
  f->invoker(f->functor, &arg);
}

// -- buffers: plain host memory here (on a Mac they are MTLBuffers in unified memory) ------------

MPSK_EXPORT AOTITorchError aoti_torch_mps_malloc(void** buffer, size_t num_bytes) {
  if (buffer == nullptr) return fail("aoti_torch_mps_malloc: NULL output pointer");
  *buffer = malloc(num_bytes ? num_bytes : 1);
  return *buffer ? AOTI_TORCH_SUCCESS : fail("aoti_torch_mps_malloc: out of memory");
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_free(void* ptr) {
  free(ptr);
  return AOTI_TORCH_SUCCESS;
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_memcpy(
    void* buffer, size_t constant_offset, size_t bytes_read, size_t data_size, uint8_t* constants_start) {
  if (buffer == nullptr || constants_start == nullptr)
    return fail("aoti_torch_mps_memcpy: NULL buffer or constants_start");
  memcpy(static_cast<uint8_t*>(buffer) + constant_offset, constants_start + bytes_read, data_size);
  return AOTI_TORCH_SUCCESS;
}

MPSK_EXPORT AOTITorchError aoti_torch_mps_copy_buffer(
    void* src_buffer, void* dst_buffer, size_t data_size, size_t src_offset, size_t dst_offset) {
  if (src_buffer == nullptr || dst_buffer == nullptr) return fail("aoti_torch_mps_copy_buffer: NULL buffer");
  memmove(static_cast<uint8_t*>(dst_buffer) + dst_offset, static_cast<uint8_t*>(src_buffer) + src_offset, data_size);
  return AOTI_TORCH_SUCCESS;
}
