// Private: PyTorch's pre-zip formats.
//
// Legacy (torch 0.4-1.5, and later with _use_new_zipfile_serialization=False):
// five pickles back to back — magic number, protocol version (1001),
// sys_info, the object (storages as 6-field persistent ids), the sorted list
// of storage keys — then each storage as an i64 element count and its bytes,
// always little-endian. Tar (torch 0.1.x): members `storages`, `tensors` and
// `pickle`. See docs/formats/torch_legacy.md.
#pragma once

#include <memory>

#include "ckpt/load.hpp"
#include "io/file.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::formats {

// Storages are copied once, straight from the file into their final place
// (they are referenced before their bytes appear, so they are never views).
Value load_torch_legacy(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                        pickle::Observer* observer);
Value load_torch_tar(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                     pickle::Observer* observer);

}  // namespace ckpt::formats
