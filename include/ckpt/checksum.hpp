// ckpt/checksum.hpp — the CRC-32 that zip archives (torch.save files) and the
// checkpoint manager's manifest record.
//
//   uint32_t crc = ckpt::crc32(bytes);            // a whole buffer
//   crc = ckpt::crc32(more, crc);                 // continued over the next piece
//
// CRC-32/ISO-HDLC (IEEE 802.3, reflected, as zlib's crc32() and Python's
// zlib.crc32 compute it), hardware-accelerated where the CPU allows.
// Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace ckpt {

// The CRC-32 of `data`, continuing from `crc` (0 to start).
uint32_t crc32(std::span<const std::byte> data, uint32_t crc = 0) noexcept;

// A CRC-32 in the form manifest.json and `ckpt manage` write it: eight
// lower-case hex digits, most significant first ("0000beef").
std::string crc32_hex(uint32_t crc);

}  // namespace ckpt
