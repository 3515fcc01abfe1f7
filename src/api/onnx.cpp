// ckpt::refresh_onnx_weights: new weights into an exported ONNX graph.
#include "ckpt/onnx.hpp"

#include "ckpt/error.hpp"
#include "formats/onnx.hpp"
#include "io/file.hpp"

namespace ckpt {

OnnxRefreshResult refresh_onnx_weights(const std::string& template_path, const StateDict& weights,
                                       const std::string& out_path) {
  try {
    return formats::refresh_onnx(io::Env::posix(), template_path, weights, out_path);
  } catch (Error& e) {
    e.add_context(ErrorContext{template_path, "", std::nullopt});
    throw;
  }
}

}  // namespace ckpt
