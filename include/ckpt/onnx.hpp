// ckpt/onnx.hpp — the weights of exported ONNX models.
//
//   ckpt::StateDict w = ckpt::load_state_dict("model.onnx");   // initializers
//   ckpt::refresh_onnx_weights("model.onnx", ckpt::load_state_dict("new.pt"),
//                              "model_v2.onnx");
//
// ckpt::load(), load_state_dict() and open() read ONNX models (format
// "onnx"): every initializer of the main graph, in graph order, named as in
// the graph, from raw_data, the typed fields or external data files (whose
// `location` is resolved relative to the model's folder and refused when it
// leads outside it). Nothing else of the model is interpreted. See
// docs/formats.md for the data_type -> dtype mapping.
#pragma once

#include <string>
#include <vector>

#include "ckpt/options.hpp"  // OnnxRefreshResult
#include "ckpt/state_dict.hpp"

namespace ckpt {

// Writes `out_path`: the model `template_path` with the data of every
// main-graph initializer whose name is a key of `weights` replaced by that
// tensor; every other byte of the model (graph, opsets, metadata, other
// initializers) is kept as it was. Replaced inline initializers hold their
// data in raw_data (where the template had raw_data, at the same place).
// When the template keeps initializers in external data, the output does
// too: one file named after the output, `<out file name>.data`, next to
// `out_path` (the initializers' `location` entries say so, offsets kept when
// the template had a single external file). Files are written atomically; the
// template is never modified. A dtype or shape mismatch throws
// ckpt::TypeError naming the key before anything is written.
OnnxRefreshResult refresh_onnx_weights(const std::string& template_path, const StateDict& weights,
                                       const std::string& out_path);

}  // namespace ckpt
