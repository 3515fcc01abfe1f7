#include "ckpt/options.hpp"

#include <utility>

namespace ckpt {

std::string_view format_name(Format f) noexcept {
  switch (f) {
    case Format::torch_zip: return "torch_zip";
    case Format::torch_legacy: return "torch_legacy";
    case Format::torch_tar: return "torch_tar";
    case Format::torchscript: return "torchscript";
    case Format::safetensors: return "safetensors";
    case Format::dcp: return "dcp";
    case Format::onnx: return "onnx";
    case Format::unknown: break;
  }
  return "unknown";
}

// ---------------------------------------------------------------- MapLocation

MapLocation::MapLocation(std::string device)
    : fn_([device = std::move(device)](const std::string&) { return device; }) {}

MapLocation::MapLocation(std::map<std::string, std::string> mapping)
    : fn_([mapping = std::move(mapping)](const std::string& saved) {
        auto it = mapping.find(saved);
        return it == mapping.end() ? saved : it->second;
      }) {}

MapLocation::MapLocation(std::function<std::string(const std::string&)> fn) : fn_(std::move(fn)) {}

std::string MapLocation::apply(const std::string& saved_device) const {
  return fn_ ? fn_(saved_device) : saved_device;
}

}  // namespace ckpt
