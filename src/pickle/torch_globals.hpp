// Private: the globals a weights-only load may reference, and what calling
// them means. Nothing here executes anything: each allowed function is
// reimplemented natively (a tensor rebuild, an OrderedDict, a torch.Size...).
//
// The allow-list mirrors torch 2.x `_get_allowed_globals()`
// (torch/_weights_only_unpickler.py). Adding a callable (e.g. a new tensor
// rebuild function) is one entry in kNatives (torch_globals.cpp) plus the
// function that implements it.
#pragma once

#include <string>
#include <string_view>

#include "ckpt/value.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::pickle {

// Modules refused in every mode, as torch's weights-only unpickler does.
bool is_blocked_module(std::string_view module);

// Python 2 names as pickles written by Python 2 (or by torch.save under
// Python 2) spell them, mapped to their Python 3 home: `__builtin__` ->
// `builtins`, (`__builtin__`, `unicode`) -> (`builtins`, `str`), `copy_reg` ->
// `copyreg`, ... (torch._utils.IMPORT_MAPPING / NAME_MAPPING, which the
// weights-only unpickler applies), plus torch's module alias `torch.tensor` ->
// `torch._tensor`.
void map_global_name(std::string& module, std::string& name);

// What a native implementation may ask of the VM that called it.
class CallContext {
 public:
  virtual ~CallContext() = default;
  virtual const Limits& limits() const = 0;
  // Throws FormatError unless `key` may be a dict key or set item (hashable,
  // and small and shallow enough to hash within the VM's limits).
  virtual void check_key(const Value& key) = 0;
  // Adds `item` to the set `set` unless an equal item is already there.
  virtual void set_add(Value& set, Value item) = 0;
  // Calls `callable` with `args` as REDUCE would (used by
  // torch._tensor._rebuild_from_type_v2).
  virtual Value call(const Value& callable, Value args) = 0;
};

// Whether `g` is an allowed global that ckpt implements as a function or
// class call (as opposed to one allowed only as a value, like torch.Tensor or
// torch.FloatStorage).
bool is_callable_global(const Global& g);

// Calls the allowed function or class `g` with `args`. Throws
// ckpt::UnsupportedError for allowed tensor kinds ckpt does not model yet
// (quantized, sparse, nested, meta, subclasses) and ckpt::FormatError for
// malformed arguments. `g` must satisfy is_callable_global.
Value call_torch_global(const Global& g, const List& args, CallContext& ctx);

}  // namespace ckpt::pickle
