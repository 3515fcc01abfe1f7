// Private: TorchScript archives (torch.jit.save, LibTorch torch::save).
//
// The same zip container as torch.save, with the module object in data.pkl
// (classes named __torch__.*, kept as inert objects — the code is never
// run), tensor constants in constants.pkl, and the TorchScript source of
// every class under code/. Parameters and buffers are not marked in the
// pickle: each class's source lists them in `__parameters__ = [...]` and
// `__buffers__ = [...]`, which is how ckpt rebuilds module.state_dict().
// See docs/formats/torchscript.md.
#pragma once

#include "ckpt/options.hpp"
#include "ckpt/state_dict.hpp"
#include "ckpt/value.hpp"
#include "container/zip.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::formats {

struct TorchScriptModule {
  Value root;        // the module object tree (inert ckpt::Object values)
  Value constants;   // the constants tuple (None when absent)
  StateDict state_dict;  // parameters then buffers of each module, then children
};

TorchScriptModule read_torchscript(const zip::ZipReader& zip, const LoadOptions& options,
                                   pickle::Observer* observer);

// What ckpt::load returns for a TorchScript archive: the state dict as an
// OrderedDict (weights_only), or with weights_only=false a dict
// {"state_dict", "module", "constants"}.
Value load_torchscript(const zip::ZipReader& zip, const LoadOptions& options, pickle::Observer* observer);

}  // namespace ckpt::formats
