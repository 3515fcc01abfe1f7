// Private: name -> position for names that live elsewhere (the entries of a
// zip archive, the tensors of a Reader). Open addressing over positions + 1
// (0: empty) in a power-of-two table at most half full; names are compared
// where they live, through `name_of(position)`. No node and no key copy per
// name: a file of 100,000 tensors has 100,000 records and 100,000 names,
// and a hash map's nodes were allocated at open and freed at close.
#pragma once

#include <cstddef>
#include <functional>
#include <string_view>
#include <vector>

namespace ckpt {

class NameTable {
 public:
  static constexpr size_t npos = static_cast<size_t>(-1);

  // Empties the table and makes room for `count` names (more still fit:
  // the table grows).
  void reset(size_t count) {
    size_t slots = 16;
    while (slots < 2 * count) slots *= 2;
    slots_.assign(slots, 0);
    size_ = 0;
  }

  // Adds `name` at `position`; false, and nothing added, when the table
  // holds the name already. `name_of(i)` is the name at position i (called
  // for positions already in the table only).
  template <class NameOf>
  bool insert(std::string_view name, size_t position, const NameOf& name_of) {
    if (2 * (size_ + 1) > slots_.size()) grow(name_of);
    size_t& slot = slots_[probe(name, name_of)];
    if (slot != 0) return false;
    slot = position + 1;
    ++size_;
    return true;
  }

  // The position of `name`, or npos.
  template <class NameOf>
  size_t find(std::string_view name, const NameOf& name_of) const {
    if (slots_.empty()) return npos;
    const size_t slot = slots_[probe(name, name_of)];
    return slot == 0 ? npos : slot - 1;
  }

 private:
  // Where `name` is, or the empty slot that ends its probe.
  template <class NameOf>
  size_t probe(std::string_view name, const NameOf& name_of) const {
    const size_t mask = slots_.size() - 1;
    for (size_t s = std::hash<std::string_view>{}(name) & mask;; s = (s + 1) & mask)
      if (slots_[s] == 0 || name_of(slots_[s] - 1) == name) return s;
  }

  template <class NameOf>
  void grow(const NameOf& name_of) {
    std::vector<size_t> old = std::move(slots_);
    reset(old.size());  // twice the slots: at most a quarter full after
    for (size_t slot : old)
      if (slot != 0) {
        slots_[probe(name_of(slot - 1), name_of)] = slot;
        ++size_;
      }
  }

  std::vector<size_t> slots_;
  size_t size_ = 0;
};

}  // namespace ckpt
