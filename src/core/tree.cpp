// The object tree's paths (ckpt/tree.hpp).
#include "ckpt/tree.hpp"

#include <charconv>
#include <vector>

#include "ckpt/error.hpp"
#include "ckpt/sparse.hpp"

namespace ckpt {

namespace {
constexpr size_t kMaxWalkVisits = size_t{20} << 20;  // 20M nodes: far above real checkpoints (~1M tensors)
}  // namespace

std::string path_component(const Value& key) {
  if (key.is_string()) return key.as_string();
  if (key.is_int() || key.is_bool()) return std::to_string(key.as_int());
  return key.repr();
}

namespace {

// The walk of for_each_tensor / for_each_mutable_tensor (V: const Value or Value).
template <class V, class Fn>
void walk_tensors(V& root, const Fn& fn) {
  // Iterative: the trees ckpt's loaders build are acyclic and depth-limited,
  // but a caller's tree may be deep.
  struct Frame {
    V* value;
    std::string path;
  };
  std::vector<Frame> stack{{&root, ""}};
  std::vector<Frame> children;
  // Shared containers are walked once per path that reaches them; a pickle
  // can make that number explode (a list holding one list twice, 40 deep:
  // 2^40 paths), so the walk is bounded.
  size_t visits = 0;
  auto join = [](const std::string& base, std::string part) {
    if (base.empty()) return part;  // moved, not copied
    return base + "/" + part;
  };
  while (!stack.empty()) {
    Frame f = std::move(stack.back());
    stack.pop_back();
    if (++visits > kMaxWalkVisits)
      throw LimitError("the object tree reaches shared containers through more than " +
                       std::to_string(kMaxWalkVisits) + " paths; refusing to walk it");
    V& v = *f.value;
    children.clear();
    switch (v.kind()) {
      case Value::Kind::Tensor:
        fn(f.path, v.as_tensor());
        break;
      case Value::Kind::Dict:
        for (auto& [k, val] : v.as_dict()) children.push_back({&val, join(f.path, path_component(k))});
        break;
      case Value::Kind::List:
      case Value::Kind::Tuple: {
        List& items = v.items();
        for (size_t i = 0; i < items.size(); ++i) children.push_back({&items[i], join(f.path, std::to_string(i))});
        break;
      }
      case Value::Kind::Object:
        if (auto sparse = as_sparse(v)) {  // its parts, named as torch's accessors (args: (layout, data))
          List& data = v.as_object().args.as_tuple()[1].as_tuple();
          for (size_t i = 0; i < sparse->parts.size(); ++i)
            children.push_back({&data[i], join(f.path, sparse->parts[i].first)});
          break;
        }
        children.push_back({&v.as_object().state, f.path});
        break;
      default:
        break;
    }
    for (auto it = children.rbegin(); it != children.rend(); ++it) stack.push_back(std::move(*it));
  }
}

}  // namespace

void for_each_tensor(const Value& root,
                     const std::function<void(const std::string& path, const Tensor& tensor)>& fn) {
  walk_tensors(root, fn);
}

void for_each_mutable_tensor(Value& root, const std::function<void(const std::string& path, Tensor& tensor)>& fn) {
  walk_tensors(root, fn);
}

std::string describe(const Value& v) {
  if (!v.is_dict()) return "a " + std::string(v.kind_name());
  const Dict& d = v.as_dict();
  std::string keys;
  size_t shown = 0;
  for (const auto& [k, val] : d) {
    if (shown == 8) {
      keys += ", ...";
      break;
    }
    if (shown++) keys += ", ";
    keys += k.repr();
  }
  return "a dict with keys " + keys;
}

const Value& lookup(const Value& root, std::string_view path) {
  const Value* cur = &root;
  std::string walked;
  while (!path.empty()) {
    size_t slash = path.find('/');
    std::string_view part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view{} : path.substr(slash + 1);
    if (part.empty()) continue;
    int64_t index = 0;
    auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
    bool is_index = ec == std::errc() && p == part.data() + part.size();
    const Value* next = nullptr;
    if (cur->is_dict()) {
      next = cur->as_dict().find(Value(std::string(part)));
      if (!next && is_index) next = cur->as_dict().find(Value(index));
    } else if ((cur->is_list() || cur->is_tuple()) && is_index) {
      const List& items = cur->items();
      if (index >= 0 && static_cast<size_t>(index) < items.size()) next = &items[static_cast<size_t>(index)];
    }
    if (!next)
      throw TypeError("no '" + std::string(part) + "' in " + (walked.empty() ? "the checkpoint" : "'" + walked + "'") +
                      " (" + describe(*cur) + ")");
    if (!walked.empty()) walked += "/";
    walked += part;
    cur = next;
  }
  return *cur;
}

}  // namespace ckpt
