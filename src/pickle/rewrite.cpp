#include "pickle/rewrite.hpp"

#include <unordered_map>
#include <utility>
#include <vector>

#include "ckpt/error.hpp"

namespace ckpt::pickle {

namespace {

class Rewriter {
 public:
  Rewriter(const std::function<Value(const Value&)>& replace, int max_depth)
      : replace_(replace), max_depth_(max_depth) {}

  Value operator()(const Value& v, int depth) {
    if (depth > max_depth_) throw FormatError("object nesting is too deep to rewrite");
    const void* id = v.container_id();
    if (id == nullptr) return v;
    if (auto it = done_.find(id); it != done_.end()) return it->second;
    Value out = rewrite_once(v, depth);
    done_.emplace(id, out);
    return out;
  }

 private:
  Value rewrite_once(const Value& v, int depth) {
    switch (v.kind()) {
      case Value::Kind::Object: {
        Object& o = v.as_object();
        o.args = (*this)(o.args, depth + 1);
        o.kwargs = (*this)(o.kwargs, depth + 1);
        o.state = (*this)(o.state, depth + 1);
        for (auto& item : o.list_items) item = (*this)(item, depth + 1);
        for (auto& [k, val] : o.dict_items) {
          k = (*this)(k, depth + 1);
          val = (*this)(val, depth + 1);
        }
        return replace_(v);
      }
      case Value::Kind::List:
      case Value::Kind::Tuple:
        for (auto& item : v.items()) item = (*this)(item, depth + 1);
        return v;
      case Value::Kind::Set:
        for (auto& item : v.as_set()) item = (*this)(item, depth + 1);
        return v;
      case Value::Kind::Dict:
        rewrite_dict(v.as_dict(), depth);
        return v;
      default:
        return v;
    }
  }

  void rewrite_dict(Dict& d, int depth) {
    bool key_changed = false;
    for (auto& [k, val] : d) {
      val = (*this)(val, depth + 1);
      if (k.container_id() != nullptr) {
        Value nk = (*this)(k, depth + 1);
        key_changed = key_changed || nk.container_id() != k.container_id();
      }
    }
    if (d.attributes.container_id() != nullptr) d.attributes = (*this)(d.attributes, depth + 1);
    if (!key_changed) return;
    // A key became another value (and hash): rebuild the index.
    std::vector<Dict::Item> items(d.begin(), d.end());
    d.clear();
    for (auto& [k, val] : items) {
      Value nk = (*this)(k, depth + 1);  // memoized: no second rewrite
      if (!nk.hashable()) throw FormatError("a dict key became an unhashable " + std::string(nk.kind_name()));
      d.set(nk, val);
    }
  }

  const std::function<Value(const Value&)>& replace_;
  int max_depth_;
  std::unordered_map<const void*, Value> done_;
};

}  // namespace

Value rewrite_objects(const Value& root, const std::function<Value(const Value&)>& replace, int max_depth) {
  return Rewriter(replace, max_depth)(root, 0);
}

}  // namespace ckpt::pickle
