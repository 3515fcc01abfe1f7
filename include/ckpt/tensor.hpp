// ckpt/tensor.hpp — a strided view of a Storage, as PyTorch pickles it.
//
// A Tensor holds a dtype, sizes and strides (in elements), a storage offset
// (in elements) and the Storage it views, plus what torch.save records about
// it: the device string it was saved from ("cpu", "cuda:0"), requires_grad
// and whether it was an nn.Parameter. Tensors are cheap value types: copying
// one shares the storage, like a view in PyTorch. Non-contiguous and
// overlapping views are legal. The constructor checks that every element the
// view can address lies inside the storage, so element access never reads out
// of bounds. Not synchronised: share across threads read-only.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ckpt/dtype.hpp"
#include "ckpt/storage.hpp"

namespace ckpt {

struct Quantization;

class Tensor {
 public:
  Tensor() = default;  // undefined tensor (no storage, dim 0, float32)

  // A view of `storage`. Throws ckpt::FormatError when the view reaches
  // outside the storage or a size/stride is negative or overflows.
  Tensor(Storage storage, DType dtype, std::vector<int64_t> sizes, std::vector<int64_t> strides,
         int64_t storage_offset = 0);

  // A new contiguous tensor with owned, uninitialised storage.
  static Tensor empty(DType dtype, std::vector<int64_t> sizes);
  // A new contiguous tensor holding a copy of `bytes` (row-major elements).
  static Tensor from_bytes(DType dtype, std::vector<int64_t> sizes, std::span<const std::byte> bytes);
  // Row-major strides for `sizes`.
  static std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes);

  bool defined() const noexcept { return static_cast<bool>(storage_); }
  DType dtype() const noexcept { return dtype_; }
  const std::vector<int64_t>& sizes() const noexcept { return sizes_; }
  const std::vector<int64_t>& strides() const noexcept { return strides_; }
  int64_t storage_offset() const noexcept { return storage_offset_; }
  const Storage& storage() const noexcept { return storage_; }
  int64_t dim() const noexcept { return static_cast<int64_t>(sizes_.size()); }
  int64_t numel() const noexcept { return numel_; }
  size_t itemsize() const noexcept { return ckpt::itemsize(dtype_); }
  // Bytes of the elements (numel * itemsize), not of the storage.
  size_t nbytes() const noexcept { return static_cast<size_t>(numel_) * itemsize(); }
  bool is_contiguous() const noexcept;

  // Pointer to element 0 (storage data + storage_offset * itemsize).
  const std::byte* data() const noexcept;
  std::byte* mutable_data() const;

  // The elements in row-major order, little-endian: the bytes of
  // t.contiguous(). A plain copy when the tensor is already contiguous.
  std::vector<std::byte> contiguous_bytes() const;
  void copy_contiguous_to(std::span<std::byte> out) const;  // out.size() == nbytes()
  // This tensor when contiguous, else a contiguous copy (metadata kept).
  Tensor contiguous() const;
  // A deep copy into owned memory (contiguous).
  Tensor clone() const;
  // A copy converted to `dtype` (torch's tensor.to(dtype)), rounding to
  // nearest even. Casts between float64, float32, float16 and bfloat16;
  // other pairs throw ckpt::UnsupportedError. Returns *this when the dtype
  // is already `dtype`.
  Tensor to(DType dtype) const;

  // Same dtype, sizes and element values (bitwise).
  bool equal(const Tensor& other) const;

  // What torch.save records beside the data.
  const std::string& device() const noexcept { return device_; }
  bool requires_grad() const noexcept { return requires_grad_; }
  bool is_parameter() const noexcept { return is_parameter_; }
  void set_device(std::string device) { device_ = std::move(device); }
  void set_requires_grad(bool v) noexcept { requires_grad_ = v; }
  void set_is_parameter(bool v) noexcept { is_parameter_ = v; }

  // Quantized tensors (dtype qint8, quint8, qint32, quint4x2, quint2x4): how
  // the stored integers map to real values, as torch records it. Null for
  // other tensors. The elements themselves are the integers (torch's
  // int_repr()).
  const Quantization* quantization() const noexcept { return quantization_.get(); }
  void set_quantization(std::shared_ptr<const Quantization> q) { quantization_ = std::move(q); }

 private:
  Storage storage_;
  DType dtype_ = DType::float32;
  std::vector<int64_t> sizes_;
  std::vector<int64_t> strides_;
  int64_t storage_offset_ = 0;
  int64_t numel_ = 0;
  std::string device_ = "cpu";
  bool requires_grad_ = false;
  bool is_parameter_ = false;
  std::shared_ptr<const Quantization> quantization_;
};

// torch's quantizer parameters (real = (q - zero_point) * scale).
struct Quantization {
  // torch.qscheme: "per_tensor_affine", "per_channel_affine" or
  // "per_channel_affine_float_qparams".
  std::string scheme;
  double scale = 1.0;      // per tensor: q_scale()
  int64_t zero_point = 0;  // per tensor: q_zero_point()
  Tensor scales;           // per channel: q_per_channel_scales(), one per index along `axis`
  Tensor zero_points;      // per channel: q_per_channel_zero_points()
  int64_t axis = 0;        // per channel: q_per_channel_axis()
  bool per_channel() const noexcept { return scheme.starts_with("per_channel"); }
  friend bool operator==(const Quantization& a, const Quantization& b) {
    return a.scheme == b.scheme && a.scale == b.scale && a.zero_point == b.zero_point && a.axis == b.axis &&
           a.scales.defined() == b.scales.defined() && (!a.scales.defined() || a.scales.equal(b.scales)) &&
           a.zero_points.defined() == b.zero_points.defined() &&
           (!a.zero_points.defined() || a.zero_points.equal(b.zero_points));
  }
};

// "[2, 3]"
std::string format_shape(const std::vector<int64_t>& sizes);

}  // namespace ckpt
