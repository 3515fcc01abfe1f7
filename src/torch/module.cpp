// The LibTorch adapter: dtypes, tensors, modules, training checkpoints.
// (Optimizers are in optim.cpp; LibTorch headers are heavy, so the adapter is
// kept to two translation units.)
#include <torch/version.h>

#include <memory>
#include <regex>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "ckpt/error.hpp"
#include "ckpt/torch.hpp"

namespace ckpt::torch {
namespace {

#define CKPT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

std::string shape_text(const std::vector<int64_t>& sizes) {
  // Python prints torch.Size([3, 2]).
  return "torch.Size(" + format_shape(sizes) + ")";
}

std::vector<int64_t> to_vector(c10::IntArrayRef a) { return {a.begin(), a.end()}; }

}  // namespace

// ---- dtypes -------------------------------------------------------------------

c10::ScalarType to_scalar_type(DType dtype) {
  using S = c10::ScalarType;
  switch (dtype) {
    case DType::float64: return S::Double;
    case DType::float32: return S::Float;
    case DType::float16: return S::Half;
    case DType::bfloat16: return S::BFloat16;
    case DType::int8: return S::Char;
    case DType::int16: return S::Short;
    case DType::int32: return S::Int;
    case DType::int64: return S::Long;
    case DType::uint8: return S::Byte;
    case DType::bool_: return S::Bool;
    case DType::complex32: return S::ComplexHalf;
    case DType::complex64: return S::ComplexFloat;
    case DType::complex128: return S::ComplexDouble;
#if CKPT_TORCH_AT_LEAST(2, 1)
    case DType::float8_e5m2: return S::Float8_e5m2;
    case DType::float8_e4m3fn: return S::Float8_e4m3fn;
    case DType::bits8: return S::Bits8;
    case DType::bits16: return S::Bits16;
    case DType::bits1x8: return S::Bits1x8;
    case DType::bits2x4: return S::Bits2x4;
    case DType::bits4x2: return S::Bits4x2;
#endif
#if CKPT_TORCH_AT_LEAST(2, 2)
    case DType::float8_e5m2fnuz: return S::Float8_e5m2fnuz;
    case DType::float8_e4m3fnuz: return S::Float8_e4m3fnuz;
#endif
#if CKPT_TORCH_AT_LEAST(2, 3)
    case DType::uint16: return S::UInt16;
    case DType::uint32: return S::UInt32;
    case DType::uint64: return S::UInt64;
#endif
#if CKPT_TORCH_AT_LEAST(2, 8)
    case DType::float8_e8m0fnu: return S::Float8_e8m0fnu;
    case DType::float4_e2m1fn_x2: return S::Float4_e2m1fn_x2;
#endif
    case DType::qint8:
    case DType::quint8:
    case DType::qint32:
    case DType::quint4x2:
    case DType::quint2x4:
      throw UnsupportedError("dtype torch." + std::string(name(dtype)) +
                             ": quantized tensors are not supported by the LibTorch adapter");
    default:
      break;
  }
  throw UnsupportedError("dtype torch." + std::string(name(dtype)) + " does not exist in LibTorch " +
                         TORCH_VERSION);
}

DType from_scalar_type(c10::ScalarType type) {
  using S = c10::ScalarType;
  switch (type) {
    case S::Double: return DType::float64;
    case S::Float: return DType::float32;
    case S::Half: return DType::float16;
    case S::BFloat16: return DType::bfloat16;
    case S::Char: return DType::int8;
    case S::Short: return DType::int16;
    case S::Int: return DType::int32;
    case S::Long: return DType::int64;
    case S::Byte: return DType::uint8;
    case S::Bool: return DType::bool_;
    case S::ComplexHalf: return DType::complex32;
    case S::ComplexFloat: return DType::complex64;
    case S::ComplexDouble: return DType::complex128;
#if CKPT_TORCH_AT_LEAST(2, 1)
    case S::Float8_e5m2: return DType::float8_e5m2;
    case S::Float8_e4m3fn: return DType::float8_e4m3fn;
    case S::Bits8: return DType::bits8;
    case S::Bits16: return DType::bits16;
    case S::Bits1x8: return DType::bits1x8;
    case S::Bits2x4: return DType::bits2x4;
    case S::Bits4x2: return DType::bits4x2;
#endif
#if CKPT_TORCH_AT_LEAST(2, 2)
    case S::Float8_e5m2fnuz: return DType::float8_e5m2fnuz;
    case S::Float8_e4m3fnuz: return DType::float8_e4m3fnuz;
#endif
#if CKPT_TORCH_AT_LEAST(2, 3)
    case S::UInt16: return DType::uint16;
    case S::UInt32: return DType::uint32;
    case S::UInt64: return DType::uint64;
#endif
#if CKPT_TORCH_AT_LEAST(2, 8)
    case S::Float8_e8m0fnu: return DType::float8_e8m0fnu;
    case S::Float4_e2m1fn_x2: return DType::float4_e2m1fn_x2;
#endif
    default:
      break;
  }
  throw UnsupportedError("LibTorch dtype " + std::string(c10::toString(type)) +
                         " has no ckpt equivalent (quantized and sub-byte types are not supported)");
}

// ---- tensors ------------------------------------------------------------------

::torch::Tensor to_torch(const ckpt::Tensor& tensor, const ToTorchOptions& options) {
  if (!tensor.defined()) return {};
  const auto type = to_scalar_type(tensor.dtype());
  auto topts = ::torch::TensorOptions().dtype(type).device(::torch::kCPU);
  ::torch::Tensor out;
  const Storage& storage = tensor.storage();
  if (!options.copy && storage.writable() && storage.nbytes() > 0) {
    // View the whole storage, so that the offset and strides are torch's own
    // and tensors sharing a ckpt Storage share memory in torch too.
    auto keep = std::make_unique<Storage>(storage);
    std::byte* base = storage.mutable_data();
    const int64_t elems = static_cast<int64_t>(storage.nbytes() / tensor.itemsize());
    auto whole = ::torch::from_blob(
        base, {elems}, [k = keep.get()](void*) { delete k; }, topts);
    keep.release();  // owned by the torch storage's deleter from here on
    out = whole.as_strided(tensor.sizes(), tensor.strides(), tensor.storage_offset());
  } else {
    out = ::torch::empty(tensor.sizes(), topts);
    if (tensor.nbytes() > 0) {
      tensor.copy_contiguous_to(
          {static_cast<std::byte*>(out.data_ptr()), static_cast<size_t>(tensor.nbytes())});
    }
    if (tensor.strides() != ckpt::Tensor::contiguous_strides(tensor.sizes()) && tensor.numel() > 1) {
      // Keep the saved layout (a transposed weight stays transposed).
      auto strided = ::torch::empty_strided(tensor.sizes(), tensor.strides(), topts);
      strided.copy_(out);
      out = strided;
    }
  }
  if (options.use_device && !tensor.device().empty() && tensor.device() != "cpu") {
    out = out.to(::torch::Device(tensor.device()));
  }
  if (tensor.requires_grad()) out.set_requires_grad(true);
  return out;
}

ckpt::Tensor from_torch(const ::torch::Tensor& input) {
  if (!input.defined()) return {};
  if (input.is_sparse() || input.is_quantized() || input.layout() != ::torch::kStrided) {
    throw UnsupportedError("from_torch: only strided (dense, not quantized) tensors are supported");
  }
  const std::string device = input.device().str();
  ::torch::Tensor t = input.is_cpu() ? input.detach() : input.detach().to(::torch::kCPU);
  const DType dtype = from_scalar_type(t.scalar_type());
  c10::Storage st = t.storage();
  auto* data = static_cast<std::byte*>(const_cast<void*>(st.data_ptr().get()));
  Storage storage = Storage::external(data, st.nbytes(), [st]() mutable { st = {}; });
  ckpt::Tensor out(std::move(storage), dtype, to_vector(t.sizes()), to_vector(t.strides()),
                   t.storage_offset());
  out.set_device(device);
  out.set_requires_grad(input.requires_grad());
  return out;
}

// ---- modules ------------------------------------------------------------------

namespace {

// Python's order: a module's own parameters, its own buffers, then each child.
template <class Fn>
void walk(const ::torch::nn::Module& module, const std::string& prefix, Fn&& fn) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    if (p.value().defined()) fn(prefix + p.key(), p.value());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false)) {
    if (b.value().defined()) fn(prefix + b.key(), b.value());
  }
  for (const auto& c : module.named_children()) walk(*c.value(), prefix + c.key() + ".", fn);
}

std::string join_quoted(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i) s += ", ";
    s += '"' + keys[i] + '"';
  }
  return s;
}

}  // namespace

std::string module_class_name(const ::torch::nn::Module& module) {
  std::string n = module.name();
  if (auto lt = n.find('<'); lt != std::string::npos) n.resize(lt);
  if (auto colon = n.rfind("::"); colon != std::string::npos) n = n.substr(colon + 2);
  if (n.size() > 4 && n.ends_with("Impl")) n.resize(n.size() - 4);
  return n;
}

StateDict state_dict(const ::torch::nn::Module& module) {
  StateDict sd;
  walk(module, "", [&](const std::string& name, const ::torch::Tensor& t) {
    sd.set(name, from_torch(t.detach()));
  });
  return sd;
}

RenameRule strip_prefix(std::string_view prefix) {
  static const std::regex special(R"([.^$|()\[\]{}*+?\\/-])");
  return {"^" + std::regex_replace(std::string(prefix), special, R"(\$&)"), ""};
}

std::string format_incompatible_keys(std::string_view module_name, const IncompatibleKeys& keys) {
  std::vector<std::string> msgs;
  if (!keys.missing_keys.empty()) {
    msgs.push_back("Missing key(s) in state_dict: " + join_quoted(keys.missing_keys) + ". ");
  }
  if (!keys.unexpected_keys.empty()) {
    msgs.push_back("Unexpected key(s) in state_dict: " + join_quoted(keys.unexpected_keys) + ". ");
  }
  for (const auto& m : keys.mismatched) {
    msgs.push_back("size mismatch for " + m.key + ": copying a param with shape " +
                   shape_text(m.checkpoint_shape) + " from checkpoint, the shape in current model is " +
                   shape_text(m.model_shape) + ".");
  }
  std::string s = "Error(s) in loading state_dict for " + std::string(module_name) + ":";
  for (const auto& m : msgs) s += "\n\t" + m;
  return s;
}

namespace {

// A CPU torch view of `tensor`'s bytes that neither copies nor owns them:
// valid while `tensor` lives, and only ever read (it may view a read-only
// memory map).
::torch::Tensor borrow_torch(const ckpt::Tensor& tensor) {
  const Storage& storage = tensor.storage();
  const int64_t elems = static_cast<int64_t>(storage.nbytes() / tensor.itemsize());
  auto whole = ::torch::from_blob(const_cast<std::byte*>(storage.data()), {elems},
                                  ::torch::TensorOptions().dtype(to_scalar_type(tensor.dtype())));
  return whole.as_strided(tensor.sizes(), tensor.strides(), tensor.storage_offset());
}

}  // namespace

IncompatibleKeys load_state_dict(::torch::nn::Module& module, const StateDict& source,
                                 const LoadStateDictOptions& options) {
  std::optional<std::regex> only, exclude;
  std::vector<std::pair<std::regex, std::string>> rules;
  try {
    if (!options.only.empty()) only.emplace(options.only);
    if (!options.exclude.empty()) exclude.emplace(options.exclude);
    for (const auto& r : options.rename) rules.emplace_back(std::regex(r.pattern), r.replacement);
  } catch (const std::regex_error& e) {
    throw Error(std::string("load_state_dict: invalid regular expression: ") + e.what());
  }
  auto selected = [&](const std::string& key) {
    return (!only || std::regex_search(key, *only)) && (!exclude || !std::regex_search(key, *exclude));
  };

  // The checkpoint's keys after renaming, in order.
  std::vector<std::pair<std::string, const ckpt::Tensor*>> entries;
  std::unordered_map<std::string, size_t> index;
  for (const auto& [name, tensor] : source) {
    std::string key = name;
    for (const auto& [re, repl] : rules) key = std::regex_replace(key, re, repl);
    if (!selected(key)) continue;
    if (!index.emplace(key, entries.size()).second) {
      throw TypeError("load_state_dict: renaming maps two checkpoint keys to '" + key + "'");
    }
    entries.emplace_back(std::move(key), &tensor);
  }

  IncompatibleKeys result;
  std::unordered_set<std::string> used;
  std::vector<std::pair<::torch::Tensor, const ckpt::Tensor*>> copies;
  walk(module, "", [&](const std::string& name, const ::torch::Tensor& target) {
    if (!selected(name)) return;
    auto it = index.find(name);
    if (it == index.end()) {
      result.missing_keys.push_back(name);
      return;
    }
    used.insert(name);
    const ckpt::Tensor& src = *entries[it->second].second;
    auto model_shape = to_vector(target.sizes());
    if (src.sizes() != model_shape) {
      result.mismatched.push_back({name, src.sizes(), std::move(model_shape)});
      return;
    }
    copies.emplace_back(target, &src);
  });
  for (const auto& [key, tensor] : entries) {
    if (!used.count(key)) result.unexpected_keys.push_back(key);
  }
  if (options.strict && !result.empty()) {
    throw TypeError(format_incompatible_keys(module_class_name(module), result));
  }
  ::torch::NoGradGuard no_grad;
  for (auto& [target, src] : copies) {
    // One copy, from the source's bytes (a memory map when loading from a
    // path) straight into the parameter, converting dtype and layout in the
    // same pass; quantized sources go through to_torch.
    if (src->quantization() == nullptr && src->storage().nbytes() > 0)
      target.copy_(borrow_torch(*src));
    else
      target.copy_(to_torch(*src, {.use_device = false}));
  }
  return result;
}

IncompatibleKeys load_state_dict(::torch::nn::Module& module, const Value& source,
                                 const LoadStateDictOptions& options) {
  const Value& v = options.key.empty() ? source : lookup(source, options.key);
  LoadStateDictOptions rest = options;
  rest.key.clear();
  return load_state_dict(module, StateDict::from_value(v), rest);
}

IncompatibleKeys load_state_dict(::torch::nn::Module& module, const std::string& path,
                                 const LoadStateDictOptions& options) {
  // The file is mapped, not read: every tensor is a view into the mapping
  // (where its record is aligned) and is copied once, straight into its
  // parameter. No intermediate buffer is allocated or faulted.
  LoadOptions lo;
  lo.map_location = options.map_location;
  lo.mmap = true;
  lo.key = options.key;
  StateDict sd = ckpt::load_state_dict(path, lo);
  LoadStateDictOptions rest = options;
  rest.key.clear();
  try {
    return load_state_dict(module, sd, rest);
  } catch (Error& e) {
    e.add_context(ErrorContext(path));
    throw;
  }
}

void save_state_dict(const ::torch::nn::Module& module, const std::string& path,
                     const SaveOptions& options) {
  ckpt::save_state_dict(path, state_dict(module), options);
}

// ---- training checkpoints -------------------------------------------------------

void save_checkpoint(const std::string& path, const ::torch::nn::Module& model,
                     const ::torch::optim::Optimizer* optimizer, const TrainingState& state,
                     const CheckpointOptions& options) {
  const CheckpointKeys& k = options.keys;
  Value root = Value::dict();
  Dict& d = root.as_dict();
  d.set(k.model, state_dict(model).to_value());
  if (optimizer) d.set(k.optimizer, optimizer_state_dict(*optimizer, options.layout));
  d.set(k.epoch, state.epoch);
  d.set(k.step, state.step);
  if (state.best_metric) d.set(k.best_metric, *state.best_metric);
  if (!state.metadata.is_none()) d.set(k.metadata, state.metadata);
  save(path, root, options.save);
}

TrainingState load_checkpoint(const std::string& path, ::torch::nn::Module& model,
                              ::torch::optim::Optimizer* optimizer, const CheckpointOptions& options) {
  const CheckpointKeys& k = options.keys;
  LoadOptions lo;
  lo.map_location = options.map_location;
  Value root = load(path, lo);
  try {
    if (!root.is_dict()) {
      throw TypeError("a training checkpoint is a dict; this file holds a " +
                      std::string(root.kind_name()));
    }
    const Dict& d = root.as_dict();
    const Value* m = d.find(k.model);
    if (!m) throw TypeError("no key '" + k.model + "' (the model's state dict) in the checkpoint");
    LoadStateDictOptions mo;
    mo.strict = options.strict;
    mo.key = k.model;
    load_state_dict(model, root, mo);
    if (optimizer) load_optimizer_state_dict(*optimizer, root, {.key = k.optimizer});
    TrainingState st;
    if (const Value* v = d.find(k.epoch); v && !v->is_none()) st.epoch = v->as_int();
    if (const Value* v = d.find(k.step); v && !v->is_none()) st.step = v->as_int();
    if (const Value* v = d.find(k.best_metric); v && !v->is_none()) {
      st.best_metric = v->is_tensor() ? to_torch(v->as_tensor(), {.use_device = false}).item<double>()
                                      : v->as_float();
    }
    if (const Value* v = d.find(k.metadata)) st.metadata = *v;
    return st;
  } catch (Error& e) {
    e.add_context(ErrorContext(path));
    throw;
  }
}

}  // namespace ckpt::torch
