// An `mps` device for the CPU build of PyTorch, backed by host memory.
//
// What a Mac's libtorch provides for the MPS device type, minus the GPU: an allocator (host memory
// labelled `mps`), a device guard, MPS hooks (so the accelerator API and the autograd engine see
// an MPS device), and kernels for the MPS dispatch key. Every ATen op without its own kernel here
// runs through one boxed fallback: the op's `mps` tensors are re-viewed as CPU tensors over the
// same bytes (no copy), the CPU kernel runs, and its results are labelled `mps` again (a result
// that is a view of an input is given back over that input's own storage). Eager numerics are
// therefore the CPU's; the Metal kernels of a compiled program run on the Metal emulator, which
// the Python side installs as torch.mps.compile_shader.
//
// Built with the machine's g++ against the installed libtorch by mps_inductor_ext.emulated_mps.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/detail/MPSHooksInterface.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ops/is_set_to_native.h>
#include <ATen/ops/set_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using c10::DeviceType;

const c10::Device kDevice(DeviceType::MPS, 0);
const c10::Device kHost(DeviceType::CPU);

std::atomic<int64_t> g_allocated{0};

// ATen calls on mps tensors that would launch work on a Mac, by operator: every call that reaches
// the host fallback or copy_, except view ops (a view launches nothing).
std::mutex g_counts_mutex;
std::unordered_map<std::string, int64_t> g_op_counts;

void count_call(const c10::OperatorName& name) {
  std::string key = name.name;
  if (!name.overload_name.empty()) key += "." + name.overload_name;
  std::lock_guard<std::mutex> lock(g_counts_mutex);
  ++g_op_counts[key];
}

bool is_view_op(const c10::FunctionSchema& schema) {
  for (const auto& r : schema.returns()) {
    if (r.alias_info() && !r.alias_info()->isWrite()) return true;
  }
  return false;
}

// -- memory -----------------------------------------------------------------------------------

struct Block {
  c10::DataPtr host;
  size_t nbytes;
};

void free_block(void* ctx) {
  auto* block = static_cast<Block*>(ctx);
  g_allocated -= static_cast<int64_t>(block->nbytes);
  delete block;
}

// Host memory from the CPU allocator (so alignment and poisoning are the CPU's), labelled `mps`.
struct HostMpsAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t nbytes) override {
    c10::DataPtr host = c10::GetCPUAllocator()->allocate(nbytes);
    void* data = host.get();
    g_allocated += static_cast<int64_t>(nbytes);
    return {data, new Block{std::move(host), nbytes}, &free_block, kDevice};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count) std::memcpy(dest, src, count);
  }
};

HostMpsAllocator g_allocator;

// -- the device guard and the MPS hooks --------------------------------------------------------

void check_index(c10::Device d) {
  TORCH_CHECK(d.type() == DeviceType::MPS, "emulated mps: expected an mps device, got ", d);
  TORCH_CHECK(d.index() <= 0, "emulated mps: there is one mps device (index 0), got ", d);
}

struct MpsGuard final : c10::impl::DeviceGuardImplInterface {
  DeviceType type() const override { return DeviceType::MPS; }
  c10::Device exchangeDevice(c10::Device d) const override {
    check_index(d);
    return kDevice;
  }
  c10::Device getDevice() const override { return kDevice; }
  void setDevice(c10::Device d) const override { check_index(d); }
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device) const override { return c10::Stream(c10::Stream::DEFAULT, kDevice); }
  c10::Stream getDefaultStream(c10::Device) const override { return c10::Stream(c10::Stream::DEFAULT, kDevice); }
  c10::Stream exchangeStream(c10::Stream) const noexcept override { return c10::Stream(c10::Stream::DEFAULT, kDevice); }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  // One in-order stream whose work is done when it is issued: events are always complete.
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeEvent(void*) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
  void recordDataPtrOnStream(const c10::DataPtr&, const c10::Stream&) const override {}
};

C10_REGISTER_GUARD_IMPL(MPS, MpsGuard)

struct MPSHooks final : at::MPSHooksInterface {
  void init() const override {}
  bool hasMPS() const override { return true; }
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool isOnMacOSorNewer(unsigned, unsigned) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  void setCurrentDevice(c10::DeviceIndex) const override {}
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex) const override { return 0; }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex) const override { return 0; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::Allocator* getMPSDeviceAllocator() const override { return &g_allocator; }
  c10::Device getDeviceFromPtr(void*) const override { return kDevice; }
  void deviceSynchronize() const override {}
  void commitStream() const override {}
  void emptyCache() const override {}
  size_t getCurrentAllocatedMemory() const override { return static_cast<size_t>(g_allocated.load()); }
  size_t getDriverAllocatedMemory() const override { return static_cast<size_t>(g_allocated.load()); }
  // Random numbers on `mps` tensors come from the CPU generator (the ops run on the CPU).
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    return at::detail::getDefaultCPUGenerator();
  }
};


// -- CPU views of mps tensors -------------------------------------------------------------------

bool on_device(const at::Tensor& t) { return t.defined() && t.device().type() == DeviceType::MPS; }

void release_storage(void* ctx) { c10::raw::intrusive_ptr::decref(static_cast<c10::StorageImpl*>(ctx)); }

// A CPU tensor over an mps tensor's bytes: same sizes, strides and offset; it keeps the mps
// storage alive. It is resizable with the CPU allocator, so an out= argument the CPU kernel
// resizes gets fresh host memory, which adopt_resized() moves back onto the mps storage.
at::Tensor host_view(const at::Tensor& t) {
  c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  c10::raw::intrusive_ptr::incref(impl);
  c10::DataPtr data(impl->mutable_data(), impl, &release_storage, kHost);
  c10::Storage storage(c10::Storage::use_byte_size_t(), impl->nbytes(), std::move(data), c10::GetCPUAllocator(),
                       /*resizable=*/true);
  auto out = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                      t.dtype());
  out.unsafeGetTensorImpl()->set_sizes_and_strides(t.sizes(), t.strides(), t.storage_offset());
  return out;
}

struct Views {
  // host StorageImpl of a view -> the mps storage it views
  std::unordered_map<const c10::StorageImpl*, c10::Storage> device_of;
  // host StorageImpl of a fresh result -> the mps storage made for it (results may share one)
  std::unordered_map<const c10::StorageImpl*, c10::Storage> relabelled;

  at::Tensor to_host(const at::Tensor& t) {
    if (!on_device(t)) return t;
    at::Tensor h = host_view(t);
    device_of.emplace(h.storage().unsafeGetStorageImpl(), t.storage());
    return h;
  }

  c10::Storage device_storage(const at::Tensor& host) {
    const c10::StorageImpl* impl = host.storage().unsafeGetStorageImpl();
    auto it = device_of.find(impl);
    if (it != device_of.end()) return it->second;
    auto done = relabelled.find(impl);
    if (done != relabelled.end()) return done->second;
    // A fresh host result: the mps storage takes its memory over without copying.
    c10::StorageImpl* src = host.storage().unsafeGetStorageImpl();
    c10::raw::intrusive_ptr::incref(src);
    c10::DataPtr data(src->mutable_data(), src, &release_storage, kDevice);
    c10::Storage storage(c10::Storage::use_byte_size_t(), src->nbytes(), std::move(data), &g_allocator,
                         /*resizable=*/true);
    relabelled.emplace(impl, storage);
    return storage;
  }

  at::Tensor to_device(const at::Tensor& host) {
    if (!host.defined() || host.device().type() != DeviceType::CPU) return host;
    auto out = at::detail::make_tensor<c10::TensorImpl>(device_storage(host), c10::DispatchKeySet(c10::DispatchKey::MPS),
                                                        host.dtype());
    out.unsafeGetTensorImpl()->set_sizes_and_strides(host.sizes(), host.strides(), host.storage_offset());
    return out;
  }
};

// After the CPU kernel wrote through `host` (a view of `device`): carry a resize back.
void adopt_resized(const at::Tensor& device, const at::Tensor& host) {
  c10::StorageImpl* dst = device.storage().unsafeGetStorageImpl();
  c10::StorageImpl* src = host.storage().unsafeGetStorageImpl();
  if (src->data() != dst->data() || src->nbytes() != dst->nbytes()) {
    TORCH_CHECK(dst->resizable(), "emulated mps: an op resized the storage of a tensor whose storage is not resizable");
    c10::DataPtr fresh = src->set_data_ptr(c10::DataPtr());
    fresh.unsafe_set_device(kDevice);
    const size_t nbytes = src->nbytes();
    dst->set_data_ptr_noswap(std::move(fresh));
    dst->set_nbytes(nbytes);
  }
  auto* impl = device.unsafeGetTensorImpl();
  if (!impl->sizes().equals(host.sizes()) || !impl->strides().equals(host.strides()) ||
      impl->storage_offset() != host.storage_offset()) {
    impl->set_sizes_and_strides(host.sizes(), host.strides(), host.storage_offset());
  }
}

// -- the boxed fallback ---------------------------------------------------------------------

bool is_device_arg(const c10::IValue& v) { return v.isDevice() && v.toDevice().type() == DeviceType::MPS; }

void run_on_host(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  if (!is_view_op(schema)) count_call(op.operator_name());
  const size_t nargs = schema.arguments().size();
  const size_t first = stack->size() - nargs;

  Views views;
  bool device_op = false;   // any mps tensor or an mps device argument
  bool host_target = false;  // a device argument naming the CPU
  std::vector<std::pair<at::Tensor, at::Tensor>> written;  // (mps tensor, its host view)

  for (size_t i = 0; i < nargs; ++i) {
    c10::IValue& v = (*stack)[first + i];
    const auto* alias = schema.arguments()[i].alias_info();
    const bool writes = alias && alias->isWrite();
    if (v.isTensor()) {
      const at::Tensor t = v.toTensor();
      if (on_device(t)) {
        device_op = true;
        at::Tensor h = views.to_host(t);
        if (writes) written.emplace_back(t, h);
        v = h;
      }
    } else if (v.isTensorList()) {
      auto list = v.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) {
        const at::Tensor t = list[j];
        if (on_device(t)) {
          device_op = true;
          at::Tensor h = views.to_host(t);
          if (writes) written.emplace_back(t, h);
          list[j] = h;
        }
      }
    } else if (v.isList()) {  // Tensor?[] (index, index_put_)
      auto list = v.toList();
      for (size_t j = 0; j < list.size(); ++j) {
        c10::IValue item = list.get(j);
        if (item.isTensor() && on_device(item.toTensor())) {
          device_op = true;
          list.set(j, views.to_host(item.toTensor()));
        }
      }
    } else if (v.isDevice()) {
      if (is_device_arg(v)) {
        device_op = true;
        v = c10::IValue(kHost);
      } else if (v.toDevice().type() == DeviceType::CPU) {
        host_target = true;
      }
    }
  }

  op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);

  for (auto& [device, host] : written) adopt_resized(device, host);

  const bool relabel = device_op && !host_target;
  const auto& returns = schema.returns();
  const size_t nret = returns.size();
  const size_t rfirst = stack->size() - nret;
  for (size_t r = 0; r < nret; ++r) {
    c10::IValue& v = (*stack)[rfirst + r];
    // A result that is an argument written in place is handed back as that argument itself.
    const auto* alias = returns[r].alias_info();
    if (alias && alias->isWrite() && v.isTensor()) {
      for (auto& [device, host] : written) {
        if (host.is_same(v.toTensor())) {
          v = device;
          break;
        }
      }
      if (on_device(v.toTensor()) || !relabel) continue;
    }
    if (!relabel) continue;
    if (v.isTensor()) {
      v = views.to_device(v.toTensor());
    } else if (v.isTensorList()) {
      auto list = v.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) list[j] = views.to_device(list[j]);
    }
  }
}

// -- kernels of the MPS key -----------------------------------------------------------------

at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout> layout, std::optional<at::Device> device,
                               std::optional<bool> pin_memory, std::optional<at::MemoryFormat> memory_format) {
  TORCH_CHECK(!layout || *layout == at::kStrided, "emulated mps: only strided tensors, got layout ", *layout);
  TORCH_CHECK(!pin_memory || !*pin_memory, "emulated mps: pin_memory is for host tensors");
  if (device) check_index(*device);
  return at::detail::empty_generic(size, &g_allocator, c10::DispatchKeySet(c10::DispatchKey::MPS),
                                   dtype.value_or(c10::get_default_dtype_as_scalartype()), memory_format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride, std::optional<at::ScalarType> dtype,
                         std::optional<at::Layout> layout, std::optional<at::Device> device,
                         std::optional<bool> pin_memory) {
  TORCH_CHECK(!layout || *layout == at::kStrided, "emulated mps: only strided tensors, got layout ", *layout);
  if (device) check_index(*device);
  return at::detail::empty_strided_generic(size, stride, &g_allocator, c10::DispatchKeySet(c10::DispatchKey::MPS),
                                           dtype.value_or(c10::get_default_dtype_as_scalartype()));
}

at::Tensor as_host(const at::Tensor& t) { return on_device(t) ? host_view(t) : t; }

// copy_ between any mix of cpu and mps tensors: the CPU copy between host views.
at::Tensor& copy_(at::Tensor& self, const at::Tensor& src, bool non_blocking) {
  static const c10::OperatorName name("aten::copy_", "");
  count_call(name);
  at::Tensor dst = as_host(self);
  dst.copy_(as_host(src), non_blocking);
  return self;
}

at::Tensor _copy_from(const at::Tensor& self, const at::Tensor& dst, bool non_blocking) {
  static const c10::OperatorName name("aten::_copy_from", "");
  count_call(name);
  as_host(dst).copy_(as_host(self), non_blocking);
  return dst;
}

at::Tensor _copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  if (!dst.sizes().equals(self.sizes())) {
    at::Tensor(dst).resize_(self.sizes());
  }
  as_host(dst).copy_(as_host(self));
  return dst;
}

// set_ and is_set_to act on the mps tensor and storage themselves: on host views they would mix
// devices (set_) or compare the views' storages instead of the tensors' (is_set_to).
at::Tensor& set_storage(at::Tensor& self, at::Storage source, int64_t offset, c10::IntArrayRef size,
                        c10::IntArrayRef stride) {
  return at::native::set_storage_cpu_(self, std::move(source), offset, size, stride);
}

at::Tensor& set_whole_storage(at::Tensor& self, at::Storage source) {
  const int64_t n = static_cast<int64_t>(source.nbytes()) / static_cast<int64_t>(self.dtype().itemsize());
  return at::native::set_storage_cpu_(self, std::move(source), 0, {n}, {});
}

at::Tensor& set_tensor(at::Tensor& self, const at::Tensor& source) {
  return at::native::set_storage_cpu_(self, source.storage(), source.storage_offset(), source.sizes(),
                                      source.strides());
}

at::Tensor& set_empty(at::Tensor& self) {
  c10::Storage empty(c10::Storage::use_byte_size_t(), 0, g_allocator.allocate(0), &g_allocator, /*resizable=*/true);
  return at::native::set_storage_cpu_(self, std::move(empty), 0, {0}, {});
}

bool is_set_to(const at::Tensor& self, const at::Tensor& tensor) { return at::native::is_set_to(self, tensor); }

// -- scaled_dot_product_attention as a Mac decomposes it -------------------------------------

std::atomic<int> g_macos_major{15}, g_macos_minor{0};

bool macos_at_least(int major, int minor) {
  const int have_major = g_macos_major.load(), have_minor = g_macos_minor.load();
  return have_major > major || (have_major == major && have_minor >= minor);
}

std::optional<at::Tensor> additive_mask(const std::optional<at::Tensor>& mask, const at::Tensor& query) {
  if (!mask.has_value() || mask->scalar_type() != at::kBool) return mask;
  auto neg_inf = at::scalar_tensor(-std::numeric_limits<double>::infinity(),
                                   at::TensorOptions().dtype(query.scalar_type()).device(mask->device()));
  return at::where(*mask, at::scalar_tensor(0.0, neg_inf.options()), neg_inf);
}

// The composite scaled_dot_product_attention on an MPS device: ATen's choice stub has no MPS entry
// (and asserts when asked in a CPU build), so the math backend is taken, and on MPS it becomes
// _scaled_dot_product_attention_math_for_mps (which takes enable_gqa itself) when nothing
// needs its gradient, there is no dropout, and the inputs are contiguous or the OS is macOS 15+.
// Registered on AutogradMPS, where the composite runs, so traced graphs show what a Mac's show.
at::Tensor sdpa_mps(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                    std::optional<double> scale, bool enable_gqa) {
  TORCH_CHECK(query.dtype() == key.dtype() && query.dtype() == value.dtype(),
              "Expected query, key, and value to have the same dtype, but got query.dtype: ", query.dtype(),
              " key.dtype: ", key.dtype(), " and value.dtype: ", value.dtype(), " instead.");
  TORCH_CHECK(query.device() == key.device() && query.device() == value.device(),
              "Expected query, key, and value to have the same device type, but got query.device: ",
              query.device(), " key.device: ", key.device(), " and value.device: ", value.device(), " instead.");
  TORCH_CHECK(query.dim() >= 2 && key.dim() >= 2 && value.dim() >= 2,
              "Expected query, key, and value to all be  at least 2 dimensional");
  const auto mask = additive_mask(attn_mask, query);
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (query.requires_grad() || key.requires_grad() || value.requires_grad());
  const bool contiguous = query.is_contiguous() && key.is_contiguous() && value.is_contiguous();
  if (dropout_p == 0.0 && !needs_grad && (contiguous || macos_at_least(15, 0))) {
    return std::get<0>(at::_scaled_dot_product_attention_math_for_mps(query, key, value, mask, dropout_p, is_causal,
                                                                        std::nullopt, scale, enable_gqa));
  }
  return std::get<0>(at::_scaled_dot_product_attention_math(query, key, value, mask, dropout_p, is_causal,
                                                             std::nullopt, scale, enable_gqa));
}

// The MPS kernel of _scaled_dot_product_attention_math_for_mps, on the CPU: the math backend over
// host views (it returns the output and the attention weights, as the Mac's does).
std::tuple<at::Tensor, at::Tensor> sdpa_math_for_mps(const at::Tensor& query, const at::Tensor& key,
                                                     const at::Tensor& value,
                                                     const std::optional<at::Tensor>& attn_mask, double dropout_p,
                                                     bool is_causal, const std::optional<at::Tensor>& dropout_mask,
                                                     std::optional<double> scale, bool enable_gqa) {
  static const c10::OperatorName name("aten::_scaled_dot_product_attention_math_for_mps", "");
  count_call(name);
  Views views;
  std::optional<at::Tensor> mask, drop;
  if (attn_mask) mask = views.to_host(*attn_mask);
  if (dropout_mask) drop = views.to_host(*dropout_mask);
  auto [out, attn] = at::_scaled_dot_product_attention_math(views.to_host(query), views.to_host(key),
                                                             views.to_host(value), mask, dropout_p, is_causal, drop,
                                                             scale, enable_gqa);
  return {views.to_device(out.contiguous()), views.to_device(attn)};
}

// -- AOTInductor packages for mps ---------------------------------------------------------
// libtorch registers a model runner per device type, and the MPS one only on macOS. The Mac's is the
// generic runner with device "mps" (model_container_runner_mps.h); so is this one.
class MpsModelRunner final : public torch::inductor::AOTIModelContainerRunner {
 public:
  MpsModelRunner(const std::string& model_so_path, size_t num_models, const std::string& device_str,
                 const std::string& bin_dir, bool run_single_threaded)
      : AOTIModelContainerRunner(model_so_path, num_models, device_str, bin_dir, run_single_threaded) {}
};

std::unique_ptr<torch::inductor::AOTIModelContainerRunner> create_mps_runner(const std::string& model_so_path,
                                                                             size_t num_models,
                                                                             const std::string& device_str,
                                                                             const std::string& bin_dir,
                                                                             const bool run_single_threaded) {
  TORCH_CHECK(device_str == "mps" || device_str.rfind("mps:", 0) == 0,
              "emulated mps: an mps model runner got device ", device_str);
  return std::make_unique<MpsModelRunner>(model_so_path, num_models, device_str, bin_dir, run_single_threaded);
}

const torch::inductor::RegisterAOTIModelRunner g_register_mps_runner("mps", &create_mps_runner);

}  // namespace

// The registry is consulted once, on the first at::detail::getMPSHooks(); whether that was
// before this library loaded is reported by mpsk_emulated_mps_hooks_active().
namespace at {
REGISTER_MPS_HOOKS(MPSHooks)
}  // namespace at

TORCH_LIBRARY_IMPL(_, MPS, m) { m.fallback(torch::CppFunction::makeFromBoxedFunction<&run_on_host>()); }

TORCH_LIBRARY_IMPL(aten, MPS, m) {
  m.impl("empty.memory_format", &empty_memory_format);
  m.impl("empty_strided", &empty_strided);
  m.impl("copy_", &copy_);
  m.impl("_copy_from", &_copy_from);
  m.impl("_copy_from_and_resize", &_copy_from_and_resize);
  m.impl("_scaled_dot_product_attention_math_for_mps", &sdpa_math_for_mps);
  m.impl("set_.source_Storage_storage_offset", &set_storage);
  m.impl("set_.source_Storage", &set_whole_storage);
  m.impl("set_.source_Tensor", &set_tensor);
  m.impl("set_", &set_empty);
  m.impl("is_set_to", &is_set_to);
}

TORCH_LIBRARY_IMPL(aten, AutogradMPS, m) { m.impl("scaled_dot_product_attention", &sdpa_mps); }

#define MPSK_EXPORT __attribute__((visibility("default")))

extern "C" {
// The per-operator call counts as "name\tcount\n" lines into buf (at most cap bytes, NUL-terminated);
// returns the size the whole text needs, without its NUL.
MPSK_EXPORT size_t mpsk_emulated_mps_op_counts(char* buf, size_t cap) {
  std::string text;
  {
    std::lock_guard<std::mutex> lock(g_counts_mutex);
    for (const auto& [name, n] : g_op_counts) text += name + "\t" + std::to_string(n) + "\n";
  }
  if (buf && cap) {
    const size_t n = std::min(cap - 1, text.size());
    std::memcpy(buf, text.data(), n);
    buf[n] = '\0';
  }
  return text.size();
}
// Bytes held by live mps tensors.
MPSK_EXPORT int64_t mpsk_emulated_mps_allocated() { return g_allocated.load(); }
// Whether libtorch took these MPS hooks (it reads its hook registry once, on first use).
MPSK_EXPORT int mpsk_emulated_mps_hooks_active() { return at::detail::getMPSHooks().hasMPS() ? 1 : 0; }
// The macOS version the device reports (torch's eager MPS choices depend on it).
MPSK_EXPORT void mpsk_emulated_mps_set_macos(int major, int minor) {
  g_macos_major = major;
  g_macos_minor = minor;
}
// Makes c10::GetAllocator(kMPS) (storages created by device) return the host allocator.
MPSK_EXPORT void mpsk_emulated_mps_set_allocator() { c10::SetAllocator(DeviceType::MPS, &g_allocator); }
}
