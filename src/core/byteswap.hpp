// Private: byte order of stored elements.
#pragma once

#include <algorithm>
#include <cstddef>

#include "ckpt/dtype.hpp"

namespace ckpt {

// Reverses the bytes of each `element_size`-byte element in place (turns
// big-endian elements into little-endian ones and back). Complex numbers are
// swapped per component: pass the component size.
inline void byteswap_elements(std::byte* data, size_t nbytes, size_t element_size) {
  if (element_size <= 1) return;
  for (size_t i = 0; i + element_size <= nbytes; i += element_size) std::reverse(data + i, data + i + element_size);
}

// byteswap_elements for elements of `dtype`: complex numbers swap their real
// and imaginary parts separately.
inline void byteswap_dtype_elements(std::byte* data, size_t nbytes, DType dtype) {
  size_t esize = itemsize(dtype);
  if (info(dtype).is_complex) esize /= 2;
  byteswap_elements(data, nbytes, esize);
}

}  // namespace ckpt
