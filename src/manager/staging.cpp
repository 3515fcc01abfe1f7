#include "manager/staging.hpp"

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <unordered_map>

#include "ckpt/error.hpp"

namespace ckpt::manager {
namespace {

// A free buffer serves a request of n bytes when it is at most this much
// larger (a tiny tensor must not hold a huge buffer that a big one needs).
size_t max_capacity_for(size_t n) { return n + n / 4 + 4096; }

bool copied(const Storage& s) { return s && s.backing() != Storage::Backing::mapped; }

// Calls fn(storage) for every storage a tensor or bare storage in `v` refers to.
void walk_storages(const Value& v, const std::function<void(const Storage&)>& fn,
                   std::unordered_map<const void*, bool>& seen) {
  switch (v.kind()) {
    case Value::Kind::Tensor:
      if (v.as_tensor().defined()) fn(v.as_tensor().storage());
      return;
    case Value::Kind::Storage:
      if (v.as_storage().storage) fn(v.as_storage().storage);
      return;
    case Value::Kind::List:
    case Value::Kind::Tuple:
    case Value::Kind::Set:
    case Value::Kind::Dict:
    case Value::Kind::Object:
      break;
    default:
      return;
  }
  if (!seen.emplace(v.container_id(), true).second) return;
  switch (v.kind()) {
    case Value::Kind::List:
    case Value::Kind::Tuple:
      for (const Value& item : v.items()) walk_storages(item, fn, seen);
      return;
    case Value::Kind::Set:
      for (const Value& item : v.as_set()) walk_storages(item, fn, seen);
      return;
    case Value::Kind::Dict: {
      const Dict& d = v.as_dict();
      walk_storages(d.attributes, fn, seen);
      for (const auto& [k, item] : d) {
        walk_storages(k, fn, seen);
        walk_storages(item, fn, seen);
      }
      return;
    }
    case Value::Kind::Object: {
      const Object& o = v.as_object();
      walk_storages(o.args, fn, seen);
      walk_storages(o.kwargs, fn, seen);
      walk_storages(o.state, fn, seen);
      for (const Value& item : o.list_items) walk_storages(item, fn, seen);
      for (const auto& [k, item] : o.dict_items) {
        walk_storages(k, fn, seen);
        walk_storages(item, fn, seen);
      }
      return;
    }
    default:
      return;
  }
}

class Copier {
 public:
  explicit Copier(const std::unordered_map<const void*, Storage>& staged) : staged_(staged) {}

  Value copy(const Value& v) {
    switch (v.kind()) {
      case Value::Kind::Tensor: {
        const Tensor& t = v.as_tensor();
        if (!t.defined()) return v;
        Tensor out(storage_for(t.storage()), t.dtype(), t.sizes(), t.strides(), t.storage_offset());
        out.set_device(t.device());
        out.set_requires_grad(t.requires_grad());
        out.set_is_parameter(t.is_parameter());
        return out;
      }
      case Value::Kind::Storage: {
        StorageValue s = v.as_storage();
        if (s.storage) s.storage = storage_for(s.storage);
        return s;
      }
      case Value::Kind::List:
      case Value::Kind::Tuple:
      case Value::Kind::Set:
      case Value::Kind::Dict:
      case Value::Kind::Object:
        break;
      default:
        return v;  // scalars and strings are held by value
    }
    if (auto it = memo_.find(v.container_id()); it != memo_.end()) return it->second;
    switch (v.kind()) {
      case Value::Kind::List:
      case Value::Kind::Tuple:
      case Value::Kind::Set: {
        Value out = v.kind() == Value::Kind::List    ? Value::list()
                    : v.kind() == Value::Kind::Tuple ? Value::tuple()
                                                     : Value::set();
        memo_.emplace(v.container_id(), out);
        const List& src = v.kind() == Value::Kind::Set ? v.as_set() : v.items();
        List& dst = v.kind() == Value::Kind::Set ? out.as_set() : out.items();
        dst.reserve(src.size());
        for (const Value& item : src) dst.push_back(copy(item));
        return out;
      }
      case Value::Kind::Dict: {
        const Dict& src = v.as_dict();
        auto d = std::make_shared<Dict>();
        d->ordered = src.ordered;
        Value out(d);
        memo_.emplace(v.container_id(), out);
        d->attributes = copy(src.attributes);
        d->reserve(src.size());
        for (const auto& [k, item] : src) d->set(copy(k), copy(item));
        return out;
      }
      case Value::Kind::Object: {
        const Object& src = v.as_object();
        auto o = std::make_shared<Object>();
        o->module = src.module;
        o->name = src.name;
        o->how = src.how;
        Value out(o);
        memo_.emplace(v.container_id(), out);
        o->args = copy(src.args);
        o->kwargs = copy(src.kwargs);
        o->state = copy(src.state);
        for (const Value& item : src.list_items) o->list_items.push_back(copy(item));
        for (const auto& [k, item] : src.dict_items) o->dict_items.emplace_back(copy(k), copy(item));
        return out;
      }
      default:
        return v;
    }
  }

 private:
  Storage storage_for(const Storage& s) const {
    auto it = staged_.find(s.id());
    return it == staged_.end() ? s : it->second;  // mapped: shared as is
  }
  const std::unordered_map<const void*, Storage>& staged_;
  std::unordered_map<const void*, Value> memo_;
};

}  // namespace

size_t StagingPool::staged_bytes(const Value& value) {
  size_t total = 0;
  std::unordered_map<const void*, bool> seen_containers, seen_storages;
  walk_storages(
      value,
      [&](const Storage& s) {
        if (copied(s) && seen_storages.emplace(s.id(), true).second) total += s.nbytes();
      },
      seen_containers);
  return total;
}

size_t StagingPool::allocated_bytes() const {
  std::lock_guard lk(state_->mu);
  return state_->allocated;
}

size_t StagingPool::in_use_bytes() const {
  std::lock_guard lk(state_->mu);
  return state_->in_use;
}

Storage StagingPool::lend(const std::shared_ptr<State>& state, Storage buffer, size_t nbytes) {
  std::byte* data = buffer.mutable_data();
  return Storage::external(
      data, nbytes,
      [state, buffer]() {
        std::lock_guard lk(state->mu);
        state->in_use -= buffer.nbytes();
        state->free.emplace(buffer.nbytes(), buffer);
        state->cv.notify_all();
      },
      /*writable=*/true);
}

std::vector<Storage> StagingPool::acquire_all(const std::vector<size_t>& sizes) {
  State& st = *state_;
  // Largest first, so that big requests get the big free buffers.
  std::vector<size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes[a] > sizes[b]; });

  std::unique_lock lk(st.mu);
  for (;;) {
    // Plan: a free buffer of a fitting capacity for each size where there is one.
    using FreeIt = std::multimap<size_t, Storage>::iterator;
    std::multimap<size_t, FreeIt> avail;
    for (auto it = st.free.begin(); it != st.free.end(); ++it) avail.emplace_hint(avail.end(), it->first, it);
    std::vector<std::optional<FreeIt>> match(sizes.size());
    size_t matched_capacity = 0, new_bytes = 0;
    for (size_t i : order) {
      auto a = avail.lower_bound(sizes[i]);
      if (a != avail.end() && a->first <= max_capacity_for(sizes[i])) {
        match[i] = a->second;
        matched_capacity += a->first;
        avail.erase(a);
      } else {
        new_bytes += sizes[i];
      }
    }
    const bool unlimited = st.limit == 0;
    const bool feasible = unlimited || st.in_use + matched_capacity + new_bytes <= st.limit;
    if (!feasible && st.in_use > 0) {
      st.cv.wait(lk);  // a snapshot being written will give its buffers back
      continue;
    }
    if (!feasible) {
      // Nothing is in use and the free buffers do not fit the plan: drop them
      // all and allocate exactly (the caller checked that the total fits).
      st.free.clear();
      st.allocated = 0;
      match.assign(sizes.size(), std::nullopt);
    }
    std::vector<Storage> out(sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (!match[i]) continue;
      out[i] = (*match[i])->second;
      st.in_use += (*match[i])->first;
      st.free.erase(*match[i]);
    }
    // Make room for the new buffers by dropping free ones nobody asked for.
    while (!unlimited && st.allocated + new_bytes > st.limit && !st.free.empty()) {
      auto it = std::prev(st.free.end());
      st.allocated -= it->first;
      st.free.erase(it);
    }
    try {
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (out[i]) continue;
        out[i] = Storage::allocate(sizes[i]);
        st.allocated += sizes[i];
        st.in_use += sizes[i];
      }
    } catch (...) {  // out of memory: give back what this call took
      for (Storage& b : out) {
        if (!b) continue;
        st.in_use -= b.nbytes();
        st.free.emplace(b.nbytes(), std::move(b));
      }
      throw;
    }
    return out;
  }
}

void StagingPool::check_fits(size_t bytes) const {
  if (state_->limit != 0 && bytes > state_->limit)
    throw LimitError("save_async: the state holds " + std::to_string(bytes) +
                     " bytes of tensor data, more than the staging limit of " + std::to_string(state_->limit) +
                     " bytes (raise ManagerOptions::staging_limit or use save())");
}

Value StagingPool::snapshot(const Value& value) {
  // Distinct storages to copy, in the order the tree holds them.
  std::vector<Storage> sources;
  {
    std::unordered_map<const void*, bool> seen_containers, seen_storages;
    walk_storages(
        value,
        [&](const Storage& s) {
          if (copied(s) && seen_storages.emplace(s.id(), true).second) sources.push_back(s);
        },
        seen_containers);
  }
  std::vector<size_t> sizes;
  size_t total = 0;
  for (const Storage& s : sources) {
    sizes.push_back(s.nbytes());
    total += s.nbytes();
  }
  check_fits(total);

  std::vector<Storage> buffers = acquire_all(sizes);
  std::unordered_map<const void*, Storage> staged;
  for (size_t i = 0; i < sources.size(); ++i) {
    Storage lent = lend(state_, std::move(buffers[i]), sizes[i]);
    if (sizes[i] > 0) std::memcpy(lent.mutable_data(), sources[i].data(), sizes[i]);
    staged.emplace(sources[i].id(), std::move(lent));
  }
  return Copier(staged).copy(value);
}

}  // namespace ckpt::manager
