// ckpt/safetensors.hpp — Hugging Face safetensors files.
//
//   ckpt::save_safetensors("model.safetensors", sd, {{"format", "pt"}});
//   ckpt::StateDict sd = ckpt::load_safetensors("model.safetensors");
//
// A safetensors file holds named tensors and string metadata, nothing else:
// no code, no object tree, so loading one is safe by construction.
// ckpt::load() and ckpt::load_state_dict() read safetensors files too (the
// format is detected from the bytes); these functions are the direct way and
// the only way to write them or read their metadata.
//
// Saving writes the same bytes as Python's safetensors.torch.save_file for
// the same tensors and metadata: tensors sorted by dtype then name, metadata
// in key order (Python's own metadata order is randomised per process).
// Non-contiguous tensors are written in row-major order. Tensors whose memory
// overlaps (tied weights, overlapping views) are refused, as Python does:
// keep one name or clone. Saves are atomic (temporary file, fsync, rename).
// Loading returns tensors in data order, as safetensors.torch.load_file does,
// each in its own storage, or (mmap = true) as read-only views into a memory
// mapping that stays alive as long as any tensor refers to it. Thread-safe;
// separate calls share nothing. See docs/formats/safetensors.md.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/state_dict.hpp"

namespace ckpt {

// Throws ckpt::UnsupportedError for dtypes safetensors has no code for
// (complex128, complex32, quantized and bits types) and for tensors sharing
// memory, ckpt::TypeError for names that are not UTF-8 or are
// "__metadata__", ckpt::IoError when the file system fails. Empty metadata
// writes no "__metadata__" entry (as save_file(..., metadata=None)). Of the
// options, fsync and progress apply.
void save_safetensors(const std::string& path, const StateDict& state_dict,
                      const std::map<std::string, std::string>& metadata = {}, const SaveOptions& options = {});
// The bytes save_safetensors would write.
std::string save_safetensors_to_buffer(const StateDict& state_dict,
                                       const std::map<std::string, std::string>& metadata = {});

// Throws ckpt::FormatError for a damaged file or one of another format,
// ckpt::UnsupportedError for dtypes torch cannot represent (F6_E2M3,
// F6_E3M2). Tensors report device "cpu". Of the options only `mmap` applies:
// tensors as read-only views into a mapping of the file instead of copies.
StateDict load_safetensors(const std::string& path, const LoadOptions& options = {});

// The header's "__metadata__" (empty when absent); reads only the header.
std::map<std::string, std::string> safetensors_metadata(const std::string& path);

// A whole training checkpoint (model and optimizer state, epoch, metrics,
// lists, ...) as a standard safetensors file, without pickle: every tensor
// is an ordinary entry named by its '/'-joined path in the tree
// ("optimizer/state/0/exp_avg"), and the rest of the tree is JSON in
// `__metadata__["ckpt.tree"]` (plus the given metadata). ckpt::load()
// restores the same Value; any safetensors reader still sees every tensor.
// Tensors referenced twice (tied weights) are stored once; other views that
// share a storage are stored as independent copies. Values JSON cannot hold
// (inert objects, storages) throw ckpt::UnsupportedError. Returns the number
// of references that were stored as aliases of an earlier tensor.
// The convention is documented in docs/formats/safetensors.md. Of the
// options, fsync and progress apply.
size_t save_safetensors_checkpoint(const std::string& path, const Value& checkpoint,
                                   const std::map<std::string, std::string>& metadata = {{"format", "pt"}},
                                   const SaveOptions& options = {});
std::string save_safetensors_checkpoint_to_buffer(const Value& checkpoint,
                                                  const std::map<std::string, std::string>& metadata = {
                                                      {"format", "pt"}});

// What safetensors users expect from tied weights (safetensors.torch.save_model):
// of several names for the same view of the same storage only the first is
// kept; tensors that overlap another kept tensor's bytes otherwise are
// replaced by independent copies. Returns (removed name, kept name) pairs;
// copies are reported with the kept name empty.
std::vector<std::pair<std::string, std::string>> remove_shared_tensors(StateDict& state_dict);

}  // namespace ckpt
