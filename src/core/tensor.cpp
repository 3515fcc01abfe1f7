#include "ckpt/tensor.hpp"

#include <cstring>
#include <limits>

#include "ckpt/error.hpp"
#include "core/checked.hpp"

namespace ckpt {

std::string format_shape(const std::vector<int64_t>& sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  return s + "]";
}

std::vector<int64_t> Tensor::contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t acc = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    strides[i] = acc;
    acc = checked_mul(acc, std::max<int64_t>(sizes[i], 1), "tensor size");
  }
  return strides;
}

Tensor::Tensor(Storage storage, DType dtype, std::vector<int64_t> sizes, std::vector<int64_t> strides,
               int64_t storage_offset)
    : storage_(std::move(storage)),
      dtype_(dtype),
      sizes_(std::move(sizes)),
      strides_(std::move(strides)),
      storage_offset_(storage_offset) {
  if (sizes_.size() != strides_.size())
    throw FormatError("tensor has " + std::to_string(sizes_.size()) + " sizes but " +
                      std::to_string(strides_.size()) + " strides");
  if (storage_offset_ < 0)
    throw FormatError("tensor storage offset " + std::to_string(storage_offset_) + " is negative");
  int64_t numel = 1;
  int64_t max_index = 0;  // largest element index reachable, relative to the offset
  for (size_t i = 0; i < sizes_.size(); ++i) {
    if (sizes_[i] < 0) throw FormatError("tensor size " + format_shape(sizes_) + " is negative");
    if (strides_[i] < 0)
      throw FormatError("tensor stride " + format_shape(strides_) + " is negative");
    numel = checked_mul(numel, sizes_[i], "tensor element count");
    if (sizes_[i] > 0)
      max_index = checked_add(max_index, checked_mul(sizes_[i] - 1, strides_[i], "tensor extent"),
                              "tensor extent");
  }
  numel_ = numel;
  if (numel_ == 0) return;  // an empty view addresses no bytes (as torch's set_)
  const int64_t isz = static_cast<int64_t>(itemsize());
  int64_t end = checked_mul(checked_add(checked_add(storage_offset_, max_index, "tensor extent"), 1,
                                        "tensor extent"),
                            isz, "tensor extent");
  if (static_cast<uint64_t>(end) > storage_.nbytes())
    throw FormatError("tensor of shape " + format_shape(sizes_) + ", strides " +
                      format_shape(strides_) + " and offset " + std::to_string(storage_offset_) +
                      " needs " + std::to_string(end) + " bytes but its " +
                      std::string(name(dtype_)) + " storage has " +
                      std::to_string(storage_.nbytes()));
}

Tensor Tensor::empty(DType dtype, std::vector<int64_t> sizes) {
  int64_t numel = 1;
  for (int64_t s : sizes) {
    if (s < 0) throw Error("tensor size " + format_shape(sizes) + " is negative");
    numel = checked_mul(numel, s, "tensor element count");
  }
  size_t nbytes = checked_mul_size(static_cast<size_t>(numel), ckpt::itemsize(dtype), "tensor bytes");
  auto strides = contiguous_strides(sizes);
  return Tensor(Storage::allocate(nbytes), dtype, std::move(sizes), std::move(strides), 0);
}

Tensor Tensor::from_bytes(DType dtype, std::vector<int64_t> sizes, std::span<const std::byte> bytes) {
  Tensor t = empty(dtype, std::move(sizes));
  if (bytes.size() != t.nbytes())
    throw Error("tensor of shape " + format_shape(t.sizes()) + " and dtype " +
                std::string(name(dtype)) + " needs " + std::to_string(t.nbytes()) + " bytes, got " +
                std::to_string(bytes.size()));
  if (!bytes.empty()) std::memcpy(t.storage_.mutable_data(), bytes.data(), bytes.size());
  return t;
}

bool Tensor::is_contiguous() const noexcept {
  if (numel_ <= 1) return true;
  int64_t expected = 1;
  for (size_t i = sizes_.size(); i-- > 0;) {
    if (sizes_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= sizes_[i];
  }
  return true;
}

const std::byte* Tensor::data() const noexcept {
  if (!storage_) return nullptr;
  if (numel_ == 0) return storage_.data();
  return storage_.data() + storage_offset_ * static_cast<int64_t>(itemsize());
}

std::byte* Tensor::mutable_data() const {
  std::byte* base = storage_.mutable_data();
  if (base == nullptr || numel_ == 0) return base;
  return base + storage_offset_ * static_cast<int64_t>(itemsize());
}

void Tensor::copy_contiguous_to(std::span<std::byte> out) const {
  if (out.size() != nbytes())
    throw Error("copy_contiguous_to: destination has " + std::to_string(out.size()) +
                " bytes, tensor has " + std::to_string(nbytes()));
  if (numel_ == 0) return;
  const size_t isz = itemsize();
  const std::byte* src = data();
  if (is_contiguous()) {
    std::memcpy(out.data(), src, out.size());
    return;
  }
  // Fold trailing dimensions that are contiguous into one block copied with
  // memcpy; iterate over the remaining (outer) dimensions with a counter.
  size_t ndim = sizes_.size();
  int64_t block = 1;  // elements per contiguous block
  size_t inner = ndim;
  while (inner > 0 && (sizes_[inner - 1] == 1 || strides_[inner - 1] == block)) {
    block *= sizes_[inner - 1];
    --inner;
  }
  const size_t block_bytes = static_cast<size_t>(block) * isz;
  std::vector<int64_t> idx(inner, 0);
  std::byte* dst = out.data();
  const std::byte* end = out.data() + out.size();
  while (dst < end) {
    int64_t off = 0;
    for (size_t d = 0; d < inner; ++d) off += idx[d] * strides_[d];
    std::memcpy(dst, src + off * static_cast<int64_t>(isz), block_bytes);
    dst += block_bytes;
    for (size_t d = inner; d-- > 0;) {
      if (++idx[d] < sizes_[d]) break;
      idx[d] = 0;
    }
  }
}

std::vector<std::byte> Tensor::contiguous_bytes() const {
  std::vector<std::byte> out(nbytes());
  copy_contiguous_to(out);
  return out;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(dtype_, sizes_);
  copy_contiguous_to({t.storage_.mutable_data(), t.nbytes()});
  t.device_ = device_;
  t.requires_grad_ = requires_grad_;
  t.is_parameter_ = is_parameter_;
  t.quantization_ = quantization_;
  return t;
}

bool Tensor::equal(const Tensor& other) const {
  if (dtype_ != other.dtype_ || sizes_ != other.sizes_) return false;
  if (static_cast<bool>(quantization_) != static_cast<bool>(other.quantization_)) return false;
  if (quantization_ && !(*quantization_ == *other.quantization_)) return false;
  if (is_contiguous() && other.is_contiguous())
    return nbytes() == 0 || std::memcmp(data(), other.data(), nbytes()) == 0;
  return contiguous_bytes() == other.contiguous_bytes();
}

}  // namespace ckpt
