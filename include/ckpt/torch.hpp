// ckpt/torch.hpp — the optional LibTorch adapter (target ckpt::torch).
//
// Binds ckpt's data to LibTorch objects, with Python's names and layouts so
// that a checkpoint moves between a Python training script and a C++ one:
//
//   auto sd = ckpt::torch::state_dict(*model);              // Module -> StateDict
//   ckpt::torch::load_state_dict(*model, "model.pt");       // file -> Module
//   ckpt::torch::load_optimizer_state_dict(opt, ckpt::load("ckpt.pt"), {.key = "optimizer"});
//   ckpt::Value v = ckpt::torch::optimizer_state_dict(opt); // as Python's optimizer.state_dict()
//
// Tensors cross without copying where the layout allows: to_torch() views the
// bytes of a ckpt Storage (the torch tensor keeps the Storage alive), and
// from_torch() wraps a CPU torch tensor's memory as an external Storage (the
// ckpt tensor keeps the torch storage alive). Read-only storages (memory
// maps) are copied, since torch tensors are writable.
//
// Built only when CMake is configured with -DCKPT_WITH_TORCH=ON and LibTorch
// is found; the core library never depends on it. Functions here are as
// thread-safe as the LibTorch objects they are given: concurrent calls on
// different modules/optimizers are independent.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.hpp"
#include "ckpt/load.hpp"
#include "ckpt/save.hpp"
#include "ckpt/state_dict.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"

namespace ckpt::torch {

// ---- dtypes and tensors ---------------------------------------------------

// The c10::ScalarType of a ckpt dtype. Throws ckpt::UnsupportedError for
// dtypes this LibTorch lacks (e.g. float8 in LibTorch 1.13) and for the
// quantized dtypes (a quantized tensor needs a quantizer, which a checkpoint's
// bytes alone do not give).
c10::ScalarType to_scalar_type(DType dtype);
// The ckpt dtype of a c10::ScalarType; throws ckpt::UnsupportedError when ckpt
// has none.
DType from_scalar_type(c10::ScalarType type);

struct ToTorchOptions {
  // Place the result on the tensor's device() ("cuda:0"...) rather than on
  // the CPU. Needs a LibTorch built with that device.
  bool use_device = true;
  // Always copy, even when a zero-copy view is possible.
  bool copy = false;
};

// A torch tensor with the same dtype, sizes, strides, storage offset and
// requires_grad. Zero-copy on the CPU when the storage is writable; the torch
// tensor holds a reference to the ckpt Storage. An undefined ckpt tensor
// gives an undefined torch tensor.
::torch::Tensor to_torch(const ckpt::Tensor& tensor, const ToTorchOptions& options = {});

// A ckpt tensor viewing the torch tensor's memory (CPU, strided, not
// quantized/sparse): dtype, sizes, strides, storage offset, requires_grad and
// the device string are kept; the ckpt Storage keeps the torch storage alive.
// A tensor on another device is first copied to the CPU (device() still
// names where it came from). An undefined torch tensor gives an undefined one.
ckpt::Tensor from_torch(const ::torch::Tensor& tensor);

// ---- modules --------------------------------------------------------------

// Module.state_dict(): parameters and buffers under their dotted names, in
// Python's order (per module: its parameters, its buffers, then its children
// depth first). Tensors are detached views of the module's memory (no copy),
// as Python's state_dict() returns.
StateDict state_dict(const ::torch::nn::Module& module);

// A regex rule applied to every checkpoint key before matching
// (std::regex_replace, ECMAScript syntax).
struct RenameRule {
  std::string pattern;
  std::string replacement;
};
// Removes a literal prefix: strip_prefix("module.") for checkpoints saved from
// DataParallel / DistributedDataParallel.
RenameRule strip_prefix(std::string_view prefix);
inline RenameRule strip_data_parallel() { return strip_prefix("module."); }

struct LoadStateDictOptions {
  // As in Python: every model key must be in the checkpoint and every
  // checkpoint key in the model, with equal shapes; otherwise ckpt::TypeError
  // with PyTorch's message. With strict = false nothing is thrown: what
  // matches is loaded and the rest is reported in IncompatibleKeys.
  bool strict = true;
  // Where the state dict lives inside a checkpoint dict ("model",
  // "state_dict", "model/encoder"); empty: the source itself.
  std::string key;
  // Applied in order to the checkpoint's keys.
  std::vector<RenameRule> rename;
  // Partial loading: only keys (after renaming) that match `only`
  // (std::regex_search) and do not match `exclude` take part, on both sides.
  // Empty: no filter.
  std::string only;
  std::string exclude;
  // Used when reading a file (see ckpt::LoadOptions). Loading from a path
  // always maps the file and copies each tensor once, from the mapping into
  // its parameter (dtype and layout converted in the same pass): no
  // intermediate buffer. `mmap` is kept for source compatibility; it no
  // longer changes anything.
  MapLocation map_location;
  bool mmap = false;
};

struct SizeMismatch {
  std::string key;
  std::vector<int64_t> checkpoint_shape;
  std::vector<int64_t> model_shape;
};

// What did not match (Python's _IncompatibleKeys plus the size mismatches
// that Python reports only in its error message).
struct IncompatibleKeys {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
  std::vector<SizeMismatch> mismatched;
  bool empty() const noexcept {
    return missing_keys.empty() && unexpected_keys.empty() && mismatched.empty();
  }
};

// model.load_state_dict(...): copies every matching tensor into the module's
// parameter/buffer under torch::NoGradGuard (param.copy_(), which converts
// dtype and device as Python does).
IncompatibleKeys load_state_dict(::torch::nn::Module& module, const StateDict& source,
                                 const LoadStateDictOptions& options = {});
IncompatibleKeys load_state_dict(::torch::nn::Module& module, const Value& source,
                                 const LoadStateDictOptions& options = {});
IncompatibleKeys load_state_dict(::torch::nn::Module& module, const std::string& path,
                                 const LoadStateDictOptions& options = {});
inline IncompatibleKeys load_state_dict(::torch::nn::Module& module, const char* path,
                                        const LoadStateDictOptions& options = {}) {
  return load_state_dict(module, std::string(path), options);
}

// torch.save(model.state_dict(), path): Python reads it back with
// model.load_state_dict(torch.load(path, weights_only=True)).
void save_state_dict(const ::torch::nn::Module& module, const std::string& path,
                     const SaveOptions& options = {});

// PyTorch's message for `keys` ("Error(s) in loading state_dict for Linear:\n\t...").
std::string format_incompatible_keys(std::string_view module_name, const IncompatibleKeys& keys);
// The name Python would print for a module: its class without namespace and
// LibTorch's "Impl" suffix ("Sequential", "Linear").
std::string module_class_name(const ::torch::nn::Module& module);

// ---- optimizers -----------------------------------------------------------

// Which Python layout optimizer_state_dict() writes: the hyper-parameter keys
// of param_groups and the type of `step` differ between torch versions.
enum class PythonLayout {
  native,     // the torch version this LibTorch is
  torch1_13,  // torch 1.13
  torch2,     // torch 2.x (as of 2.15)
};

// optimizer.state_dict() as Python writes it, for SGD, Adam, AdamW, RMSprop
// and Adagrad: {'state': {index: {...}}, 'param_groups': [{..., 'params': [...]}]}.
// Parameters are numbered across groups in order. Throws
// ckpt::UnsupportedError for other optimizers.
Value optimizer_state_dict(const ::torch::optim::Optimizer& optimizer,
                           PythonLayout layout = PythonLayout::native);

struct LoadOptimizerOptions {
  std::string key;  // path inside a checkpoint dict ("optimizer"); empty: the source itself
  MapLocation map_location;  // when reading a file
};

// optimizer.load_state_dict(...) from Python's layout (any torch version):
// sets every group's hyper-parameters and each parameter's state; state
// tensors are moved to their parameter's device (and, floating point ones,
// dtype), as Python does. The number of groups and of parameters per group
// must match (ckpt::TypeError otherwise), as must every state tensor's shape.
void load_optimizer_state_dict(::torch::optim::Optimizer& optimizer, const Value& source,
                               const LoadOptimizerOptions& options = {});
void load_optimizer_state_dict(::torch::optim::Optimizer& optimizer, const std::string& path,
                               const LoadOptimizerOptions& options = {});

// ---- training checkpoints -------------------------------------------------

// Key names of a training checkpoint dict. The defaults are ckpt's;
// pytorch_tutorial() gives the spelling of PyTorch's tutorial
// ("model_state_dict", "optimizer_state_dict", "epoch", "loss").
struct CheckpointKeys {
  std::string model = "model";
  std::string optimizer = "optimizer";
  std::string epoch = "epoch";
  std::string step = "step";
  std::string best_metric = "best_metric";
  std::string metadata = "metadata";
  static CheckpointKeys pytorch_tutorial() {
    return {"model_state_dict", "optimizer_state_dict", "epoch", "step", "loss", "metadata"};
  }
};

// What a training loop keeps beside the model and the optimizer.
struct TrainingState {
  int64_t epoch = 0;
  int64_t step = 0;
  std::optional<double> best_metric;
  Value metadata;  // any value (a Dict of user metadata); None: not written
};

struct CheckpointOptions {
  CheckpointKeys keys;
  PythonLayout layout = PythonLayout::native;
  bool strict = true;  // for the model (see LoadStateDictOptions)
  MapLocation map_location;
  SaveOptions save;
};

// Writes {model, optimizer, epoch, step, best_metric, metadata} in one file
// that Python reads with torch.load(path, weights_only=True). `optimizer`
// may be null.
void save_checkpoint(const std::string& path, const ::torch::nn::Module& model,
                     const ::torch::optim::Optimizer* optimizer, const TrainingState& state,
                     const CheckpointOptions& options = {});
// Loads a checkpoint written by save_checkpoint or by a Python script using
// the same key names. Missing epoch/step/best_metric/metadata keep their
// defaults; a missing model key is an error, a missing optimizer key is an
// error only when `optimizer` is not null.
TrainingState load_checkpoint(const std::string& path, ::torch::nn::Module& model,
                              ::torch::optim::Optimizer* optimizer,
                              const CheckpointOptions& options = {});

}  // namespace ckpt::torch
