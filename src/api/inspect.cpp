#include "ckpt/inspect.hpp"

#include <openssl/evp.h>

#include <memory>
#include <vector>

#include "ckpt/error.hpp"
#include "container/zip.hpp"
#include "formats/detect.hpp"
#include "core/hex.hpp"
#include "ckpt/sparse.hpp"

namespace ckpt {

std::string tensor_sha256(const Tensor& t) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error("sha256: cannot initialise");
  if (t.is_contiguous()) {
    EVP_DigestUpdate(ctx.get(), t.data(), t.nbytes());
  } else {
    // The bytes of t.contiguous(), streamed through a bounded buffer: an
    // expanded / stride-0 view (one float seen as 2^29 elements) is hashed
    // without materialising it. Same bytes, same digest as a copy.
    const uint64_t view_bytes = static_cast<uint64_t>(t.numel()) * t.itemsize();
    if (view_bytes > (uint64_t{1} << 36) && view_bytes / 16 > t.storage().nbytes())
      throw LimitError("sha256: the view has " + std::to_string(view_bytes) + " bytes over a storage of " +
                       std::to_string(t.storage().nbytes()) + " bytes (expanded); not hashed past 64 GiB");
    const auto& sizes = t.sizes();
    const auto& strides = t.strides();
    const size_t isz = t.itemsize();
    size_t inner = sizes.size();
    int64_t block = 1;  // trailing dimensions that are contiguous: one memcpy
    while (inner > 0 && (sizes[inner - 1] == 1 || strides[inner - 1] == block)) {
      block *= sizes[inner - 1];
      --inner;
    }
    const size_t block_bytes = static_cast<size_t>(block) * isz;
    constexpr size_t kChunk = size_t{1} << 20;
    std::vector<std::byte> buf;
    if (block_bytes < kChunk) buf.reserve(kChunk);
    std::vector<int64_t> idx(inner, 0);
    const std::byte* src = t.data();
    for (uint64_t done = 0; done < view_bytes; done += block_bytes) {
      int64_t off = 0;
      for (size_t d = 0; d < inner; ++d) off += idx[d] * strides[d];
      const std::byte* p = src + off * static_cast<int64_t>(isz);
      if (block_bytes >= kChunk) {
        EVP_DigestUpdate(ctx.get(), p, block_bytes);
      } else {
        if (buf.size() + block_bytes > kChunk) {
          EVP_DigestUpdate(ctx.get(), buf.data(), buf.size());
          buf.clear();
        }
        buf.insert(buf.end(), p, p + block_bytes);
      }
      for (size_t d = inner; d-- > 0;) {
        if (++idx[d] < sizes[d]) break;
        idx[d] = 0;
      }
    }
    if (!buf.empty()) EVP_DigestUpdate(ctx.get(), buf.data(), buf.size());
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  return to_hex(std::span<const unsigned char>(md, len));
}

std::vector<std::pair<std::string, std::string>> archive_records(const std::string& path) {
  constexpr uint64_t kMaxRecord = 256;  // these records are a few bytes
  std::vector<std::pair<std::string, std::string>> out;
  zip::ZipReader z(formats::open_for_load(path, /*mmap=*/true));
  if (z.entries().empty()) return out;
  const std::string& first = z.entries().front().name;
  const std::string prefix = first.substr(0, first.find('/') + 1);
  for (const char* rec : {"version", "byteorder", ".format_version", ".storage_alignment", ".data/serialization_id",
                          ".data/version"}) {
    const zip::Entry* e = z.find(prefix + rec);
    if (!e || e->uncompressed_size > kMaxRecord) continue;
    std::string v = z.read_string(*e);
    while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.pop_back();
    out.emplace_back(rec, std::move(v));
  }
  return out;
}

}  // namespace ckpt
