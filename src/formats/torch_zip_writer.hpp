// Private: writing the torch.save zip layout.
#pragma once

#include <string>

#include "ckpt/save.hpp"
#include "container/zip.hpp"
#include "io/file.hpp"

namespace ckpt::formats {

// Writes `value` as torch 2.x's torch.save does: data.pkl, .format_version,
// .storage_alignment, byteorder, data/<key> (each storage once, streamed
// from its bytes), version, .data/serialization_id.
void write_torch_zip(io::WritableFile& out, const Value& value, const std::string& prefix,
                     const SaveOptions& options, uint64_t zip64_threshold = 0xFFFFFFFFull);

// torch.save's archive folder for a path: the file name without its last
// extension ("dir/model.pt" -> "model"); "archive" when that is empty.
std::string archive_name_for(const std::string& path);

}  // namespace ckpt::formats
