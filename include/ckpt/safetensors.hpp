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

#include "ckpt/state_dict.hpp"

namespace ckpt {

// Throws ckpt::UnsupportedError for dtypes safetensors has no code for
// (complex128, complex32, quantized and bits types) and for tensors sharing
// memory, ckpt::TypeError for names that are not UTF-8 or are
// "__metadata__", ckpt::IoError when the file system fails. Empty metadata
// writes no "__metadata__" entry (as save_file(..., metadata=None)).
void save_safetensors(const std::string& path, const StateDict& state_dict,
                      const std::map<std::string, std::string>& metadata = {});
// The bytes save_safetensors would write.
std::string save_safetensors_to_buffer(const StateDict& state_dict,
                                       const std::map<std::string, std::string>& metadata = {});

// Throws ckpt::FormatError for a damaged file or one of another format,
// ckpt::UnsupportedError for dtypes torch cannot represent (F6_E2M3,
// F6_E3M2). Tensors report device "cpu".
StateDict load_safetensors(const std::string& path, bool mmap = false);

// The header's "__metadata__" (empty when absent); reads only the header.
std::map<std::string, std::string> safetensors_metadata(const std::string& path);

}  // namespace ckpt
