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
#include <span>

#include "ckpt/options.hpp"
#include "ckpt/value.hpp"
#include "io/file.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::formats {

// Storages are copied once, straight from the file into their final place
// (they are referenced before their bytes appear, so they are never views).
// torch.load's legacy path first tries Python's tarfile.open(mode="r:"),
// which accepts a first 512-byte block when its checksum field (octal, or
// base-256) equals the unsigned or the signed byte sum with that field read
// as spaces and its other number fields parse; no "ustar" magic is needed
// (V7 tar). An all-zero first block also opens (as an empty archive). Mirrors
// tarfile.TarInfo.frombuf / TarFile.next at offset 0.
bool is_tar_header(std::span<const std::byte> first_block) noexcept;

// Whether the bytes start with a pickle (any protocol) whose value is torch's
// legacy magic number 0x1950a86a20f9469cfc6c: torch compares the value, not
// the bytes. Decoded in inspection mode; nothing is executed.
bool starts_with_legacy_magic(std::span<const std::byte> head) noexcept;

Value load_torch_legacy(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                        pickle::Observer* observer);
Value load_torch_tar(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                     pickle::Observer* observer);

}  // namespace ckpt::formats
