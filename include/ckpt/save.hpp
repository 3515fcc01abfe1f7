// ckpt/save.hpp — writing checkpoints that torch.load(weights_only=True) reads.
//
//   ckpt::save_state_dict("model.pt", sd);
//   ckpt::save("checkpoint.pt", ckpt::Value(...));
//
// Files are PyTorch zip archives laid out as torch.save writes them (pickle
// protocol 2, 64-byte aligned records, so torch.load(mmap=True) works), with
// every storage written once however many tensors view it. For a state dict
// the data.pkl is byte for byte the one torch.save (1.13 and 2.x) writes, and
// (when no storage is empty) the whole file the one torch 2.x writes. Output
// is deterministic: the same value gives the same bytes. Saves are atomic:
// the data goes to a temporary file in the same directory that is fsynced
// and renamed over the target; on any failure the previous file is untouched
// and the temporary removed. Thread-safe; concurrent saves to different
// paths are independent.
#pragma once

#include <string>

#include "ckpt/options.hpp"
#include "ckpt/state_dict.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

void save(const std::string& path, const Value& value, const SaveOptions& options = {});
void save_state_dict(const std::string& path, const StateDict& state_dict,
                     const SaveOptions& options = {});
// The bytes of the file save() would write.
std::string save_to_buffer(const Value& value, const SaveOptions& options = {});

}  // namespace ckpt
