#include "ckpt/state_dict.hpp"

#include "ckpt/error.hpp"

namespace ckpt {

std::vector<std::string> StateDict::keys() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto& [k, v] : items_) out.push_back(k);
  return out;
}

bool StateDict::contains(std::string_view name) const { return find(name) != nullptr; }

const Tensor* StateDict::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

Tensor* StateDict::find(std::string_view name) {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &items_[it->second].second;
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
  auto it = index_.find(name);
  if (it != index_.end()) {
    items_[it->second].second = std::move(tensor);
    return;
  }
  index_.emplace(name, items_.size());
  items_.emplace_back(std::move(name), std::move(tensor));
}

bool StateDict::erase(std::string_view name) {
  auto it = index_.find(std::string(name));
  if (it == index_.end()) return false;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(it->second));
  reindex();
  return true;
}

void StateDict::reindex() {
  index_.clear();
  for (size_t i = 0; i < items_.size(); ++i) index_.emplace(items_[i].first, i);
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

StateDict StateDict::from_value(const Value& value) {
  if (!value.is_dict())
    throw TypeError("expected a state dict (a dict of tensors), found " +
                    std::string(value.kind_name()));
  const Dict& d = value.as_dict();
  StateDict sd;
  sd.items_.reserve(d.size());
  sd.index_.reserve(d.size());  // no rehash while 100,000 names go in
  for (const auto& [k, v] : d) {
    if (!k.is_string())
      throw TypeError("expected a state dict, found a dict with a " + std::string(k.kind_name()) +
                      " key " + k.repr());
    if (!v.is_tensor())
      throw TypeError("expected a state dict, but key '" + k.as_string() + "' holds a " +
                      std::string(v.kind_name()) + ", not a tensor");
    sd.set(k.as_string(), v.as_tensor());
  }
  if (d.attributes.is_dict()) {
    if (const Value* m = d.attributes.as_dict().find(Value("_metadata"))) sd.metadata = *m;
  }
  return sd;
}

}  // namespace ckpt
