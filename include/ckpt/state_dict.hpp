// ckpt/state_dict.hpp — an ordered name -> tensor map, as Module.state_dict().
//
// A StateDict keeps tensors in insertion order under their dotted names
// ("encoder.layer.0.weight") together with the per-module `_metadata` that
// PyTorch attaches to state dicts (module prefix -> {"version": N}), so that
// a load/save round trip gives Python the same object it saved. Tensors that
// share storage (tied weights) keep sharing it. Not synchronised.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

class StateDict {
 public:
  using Item = std::pair<std::string, Tensor>;

  StateDict() = default;
  StateDict(const StateDict& o);
  StateDict(StateDict&&) noexcept = default;
  StateDict& operator=(const StateDict& o);
  StateDict& operator=(StateDict&&) noexcept = default;
  ~StateDict() = default;

  size_t size() const noexcept { return items_.size(); }
  bool empty() const noexcept { return items_.empty(); }
  auto begin() const noexcept { return items_.begin(); }
  auto end() const noexcept { return items_.end(); }
  auto begin() noexcept { return items_.begin(); }
  auto end() noexcept { return items_.end(); }
  const std::vector<Item>& items() const noexcept { return items_; }
  std::vector<std::string> keys() const;

  bool contains(std::string_view name) const;
  const Tensor* find(std::string_view name) const;
  Tensor* find(std::string_view name);
  // Throws ckpt::TypeError when absent.
  const Tensor& at(std::string_view name) const;
  Tensor& at(std::string_view name);
  // Inserts or replaces (keeping the position of an existing name).
  void set(std::string name, Tensor tensor);
  bool erase(std::string_view name);

  // PyTorch's per-module metadata: prefix ("" for the root, "layer1.0")
  // -> dict such as {'version': 1}. A Dict value, or None when absent.
  Value metadata;

  // The OrderedDict a Python state_dict() pickles as (with `_metadata`
  // as its attribute when present).
  Value to_value() const;
  // Accepts a dict/OrderedDict whose values are all tensors (keys must be
  // strings). Throws ckpt::TypeError naming the first offending key.
  static StateDict from_value(const Value& value);
  // The same, moving each tensor out of `value` rather than copying it: for
  // a tree the caller is done with (a loader's result). The tree's tensors
  // are left empty, in `value` and in anything that shares its containers.
  static StateDict from_value(Value&& value);

  // Total bytes of all tensors' elements (shared storages counted once per tensor).
  size_t nbytes() const noexcept;

 private:
  // name -> position in items_ (src/core/state_dict.cpp): names are
  // compared where they live, in items_, so a name is stored once.
  struct Index;
  struct IndexDeleter {
    void operator()(Index* p) const noexcept;
  };
  std::vector<Item> items_;
  std::unique_ptr<Index, IndexDeleter> index_;  // null until the first set()
  void reindex();
  template <class V>
  static StateDict from_tree(V&& value);
};

// Whole-model pickles (torch.save(model)) read with weights_only = false are
// trees of inert nn.Module objects. module_state_dict() walks one the way
// Python's model.state_dict() does — each module's non-None _parameters,
// then its _buffers minus _non_persistent_buffers_set, then its _modules,
// names joined with '.' — and returns detached tensors (tied weights stay
// shared). Nothing is executed; the classes need not exist anywhere.
// `_metadata` is left empty (module versions are class attributes, not in
// the file) and get_extra_state() payloads are not included.
// Throws ckpt::TypeError when `module` is not such an object.
bool is_module_object(const Value& value);
StateDict module_state_dict(const Value& module);

}  // namespace ckpt
