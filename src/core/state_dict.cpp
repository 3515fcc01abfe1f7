#include "ckpt/state_dict.hpp"

#include <type_traits>

#include "ckpt/error.hpp"
#include "core/name_table.hpp"

namespace ckpt {

struct StateDict::Index {
  NameTable table;
};
void StateDict::IndexDeleter::operator()(Index* p) const noexcept { delete p; }

StateDict::StateDict(const StateDict& o)
    : metadata(o.metadata), items_(o.items_), index_(o.index_ ? new Index(*o.index_) : nullptr) {}

StateDict& StateDict::operator=(const StateDict& o) {
  if (this != &o) {
    StateDict copy(o);
    *this = std::move(copy);
  }
  return *this;
}

namespace {
template <class Items>
auto name_of(const Items& items) {
  return [&items](size_t i) -> std::string_view { return items[i].first; };
}
}  // namespace

std::vector<std::string> StateDict::keys() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto& [k, v] : items_) out.push_back(k);
  return out;
}

bool StateDict::contains(std::string_view name) const { return find(name) != nullptr; }

const Tensor* StateDict::find(std::string_view name) const {
  if (!index_) return nullptr;
  const size_t i = index_->table.find(name, name_of(items_));
  return i == NameTable::npos ? nullptr : &items_[i].second;
}

Tensor* StateDict::find(std::string_view name) {
  return const_cast<Tensor*>(static_cast<const StateDict*>(this)->find(name));
}

const Tensor& StateDict::at(std::string_view name) const {
  if (const Tensor* t = find(name)) return *t;
  throw TypeError("state dict has no key '" + std::string(name) + "'");
}

Tensor& StateDict::at(std::string_view name) {
  if (Tensor* t = find(name)) return *t;
  throw TypeError("state dict has no key '" + std::string(name) + "'");
}

void StateDict::set(std::string name, Tensor tensor) {
  if (!index_) {
    index_.reset(new Index);
    index_->table.reset(items_.capacity());
  }
  // The name goes into items_ first, where the table compares names.
  items_.emplace_back(std::move(name), std::move(tensor));
  if (!index_->table.insert(items_.back().first, items_.size() - 1, name_of(items_))) {
    const size_t i = index_->table.find(items_.back().first, name_of(items_));
    items_[i].second = std::move(items_.back().second);  // replaced, in its place
    items_.pop_back();
  }
}

bool StateDict::erase(std::string_view name) {
  const size_t i = index_ ? index_->table.find(name, name_of(items_)) : NameTable::npos;
  if (i == NameTable::npos) return false;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
  reindex();
  return true;
}

void StateDict::reindex() {
  if (!index_) index_.reset(new Index);
  index_->table.reset(items_.size());
  for (size_t i = 0; i < items_.size(); ++i) index_->table.insert(items_[i].first, i, name_of(items_));
}

size_t StateDict::nbytes() const noexcept {
  size_t n = 0;
  for (const auto& [k, t] : items_) n += t.nbytes();
  return n;
}

Value StateDict::to_value() const {
  Value v = Value::ordered_dict();
  Dict& d = v.as_dict();
  d.reserve(items_.size());
  for (const auto& [k, t] : items_) d.set(Value(k), Value(t));
  if (!metadata.is_none()) {
    Value attrs = Value::dict();
    attrs.as_dict().set(Value("_metadata"), metadata);
    d.attributes = attrs;
  }
  return v;
}

template <class V>
StateDict StateDict::from_tree(V&& value) {
  constexpr bool take = !std::is_lvalue_reference_v<V>;
  if (!value.is_dict())
    throw TypeError("expected a state dict (a dict of tensors), found " +
                    std::string(value.kind_name()));
  Dict& d = value.as_dict();
  for (const auto& [k, v] : d) {  // checked whole first: a refused tree is left as it was
    if (!k.is_string())
      throw TypeError("expected a state dict, found a dict with a " + std::string(k.kind_name()) +
                      " key " + k.repr());
    if (!v.is_tensor())
      throw TypeError("expected a state dict, but key '" + k.as_string() + "' holds a " +
                      std::string(v.kind_name()) + ", not a tensor");
  }
  StateDict sd;
  sd.items_.reserve(d.size());  // the index is sized from it: no regrowth while 100,000 names go in
  for (auto& [k, v] : d) {
    if constexpr (take) {
      sd.set(k.as_string(), std::move(v.as_tensor()));
      v = Value();  // the emptied tensor's box goes now, not with the tree
    } else sd.set(k.as_string(), std::as_const(v).as_tensor());
  }
  if (d.attributes.is_dict()) {
    if (const Value* m = d.attributes.as_dict().find(Value("_metadata"))) sd.metadata = *m;
  }
  return sd;
}

StateDict StateDict::from_value(const Value& value) { return from_tree(value); }
StateDict StateDict::from_value(Value&& value) { return from_tree(std::move(value)); }

}  // namespace ckpt
