// Private: the safe pickle virtual machine.
//
// unpickle() decodes Python pickle protocols 0-5 into a ckpt::Value without
// executing anything. Globals are resolved against a fixed table:
//  - GlobalPolicy::weights_only mirrors torch.load(weights_only=True): only
//    the allow-list (tensor rebuild functions, OrderedDict, torch.Size /
//    device / dtypes, storage classes, _codecs.encode, builtins set /
//    bytearray / complex, ...) is accepted; any other GLOBAL / STACK_GLOBAL /
//    INST raises ckpt::UnsafeError naming the global, the record and the offset.
//  - GlobalPolicy::inspect resolves the allow-list the same way and turns
//    anything else into an inert ckpt::Global / ckpt::Object (never executed).
// Every length and count is checked against the bytes that remain and against
// Limits before memory is allocated. The result is guaranteed acyclic and no
// deeper than Limits::max_depth (checked once at STOP, iteratively).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "ckpt/value.hpp"

namespace ckpt::pickle {

// Limits on what a pickle may make the VM allocate. Each default is far above
// what a real checkpoint needs and far below what would exhaust memory.
struct Limits {
  size_t max_memo = size_t{1} << 24;          // memo entries (16M; a 1M-tensor dict uses ~3M)
  size_t max_stack = size_t{1} << 24;         // values on the stack + metastack
  size_t max_depth = 1000;                    // container nesting of the result (Python's recursion limit)
  uint64_t max_string = uint64_t{1} << 31;    // one str/bytes (2 GiB); also bounded by the bytes present
  size_t max_tensor_dims = 64;                // dims of one tensor (torch's own limit is 64)
};

enum class GlobalPolicy { weights_only, inspect };

// What the VM saw, for `ckpt scan`.
struct Event {
  enum class Kind { global, reduce, build, newobj, newobj_ex, inst, obj, persid, ext };
  Kind kind;
  std::string module;  // of the global involved (callable / class), "" when unknown
  std::string name;
  uint64_t offset;     // byte offset of the opcode in the pickle
  bool allowed;        // on the weights_only allow-list
  std::string record;  // Options::record of the pickle being decoded
};

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_event(const Event& e) = 0;
};

struct Options {
  GlobalPolicy policy = GlobalPolicy::weights_only;
  Limits limits;
  // Called for PERSID / BINPERSID with the persistent id (for torch: a tuple
  // ('storage', Global torch.FloatStorage, key, location, numel)) and the
  // opcode offset; returns the object to push (a StorageValue for torch
  // storages). When empty, a persistent id is a FormatError.
  std::function<Value(const Value& pid, uint64_t offset)> persistent_load;
  Observer* observer = nullptr;
  // Format-specific classes (TorchScript's __torch__.* module classes and
  // torch.jit._pickle helpers): globals for which this returns true become
  // inert Globals (calls on them inert Objects) even under weights_only.
  // Nothing is executed either way.
  std::function<bool(std::string_view module, std::string_view name)> accept_inert;
  // numpy arrays, scalars and dtypes (pickle/numpy.hpp): their globals are
  // accepted as inert objects, and the result has arrays decoded to tensors
  // and scalars to numbers. Nothing from numpy is called.
  bool numpy = false;
  // Store a memo entry only when some GET of the pickle reads it (one pass
  // over the opcodes before the run finds which). Off: every PUT / MEMOIZE
  // stores its value, as the VM did before. The result and every error are
  // the same either way (the tests and fuzz_unpickler compare the two), but
  // for the budget of objects built, which the plan leaves more room in.
  bool memo_plan = true;
  // Error context.
  std::string file;
  std::string record;
};

// Decodes one pickle (up to and including STOP). When `consumed` is not null
// it receives the number of bytes used, and trailing bytes are allowed (the
// legacy torch format concatenates several pickles); otherwise trailing bytes
// after STOP are ignored as Python does.
Value unpickle(std::span<const std::byte> data, const Options& options, size_t* consumed = nullptr);

// Is module.name on the weights_only allow-list (after py2 name mapping)?
bool is_allowed_global(std::string_view module, std::string_view name);

}  // namespace ckpt::pickle
