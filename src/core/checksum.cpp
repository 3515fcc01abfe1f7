#include "ckpt/checksum.hpp"

#include <isa-l/crc.h>

#include <algorithm>

#include "core/hex.hpp"

namespace ckpt {

uint32_t crc32(std::span<const std::byte> data, uint32_t crc) noexcept {
  // ISA-L processes at most 2^63 bytes per call; chunk to keep `len` in range
  // of its uint64_t parameter on every platform.
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t n = data.size();
  while (n > 0) {
    size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    crc = crc32_gzip_refl(crc, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return crc;
}

std::string crc32_hex(uint32_t crc) { return hex32(crc); }

}  // namespace ckpt
