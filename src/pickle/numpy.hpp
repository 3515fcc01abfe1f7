// Private: numpy arrays, scalars and dtypes inside pickles, decoded without numpy.
//
// numpy pickles an array as numpy.core.multiarray._reconstruct(numpy.ndarray,
// (0,), b'b') followed by BUILD with (1, shape, dtype, is_fortran, raw bytes),
// a scalar as numpy.core.multiarray.scalar(dtype, raw bytes), and a dtype as
// numpy.dtype('f4', False, True) with BUILD (3, '<', None, None, None, -1, -1, 0)
// (numpy 2 names the module numpy._core). With pickle::Options::numpy the VM
// keeps these globals as inert objects and decode_numpy() turns the objects
// into values: arrays into tensors (numpy's strides kept, big-endian data
// made little-endian), scalars into the Python number they equal. Nothing
// from numpy is called. Object, string, structured and datetime dtypes are
// refused with UnsupportedError.
#pragma once

#include <string_view>

#include "ckpt/error.hpp"
#include "ckpt/value.hpp"

namespace ckpt::pickle {

// The globals numpy's pickles reference (the ones torch's documentation tells
// users to pass to torch.serialization.add_safe_globals), and builtins.bytes,
// which CPython's protocol 2 uses for the empty data of an empty array.
bool is_numpy_global(std::string_view module, std::string_view name);

// Replaces numpy array and scalar objects everywhere in `root`. Dtype objects
// that stand alone stay inert objects. `where` names the file and record.
Value decode_numpy(const Value& root, const ErrorContext& where);

}  // namespace ckpt::pickle
