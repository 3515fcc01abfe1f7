// An nn.Module object tree (torch.save(model), read with weights_only=false)
// -> the state dict Python's model.state_dict() returns.
#include <vector>

#include "ckpt/error.hpp"
#include "ckpt/state_dict.hpp"

namespace ckpt {
namespace {

const Dict* module_attributes(const Value& v) {
  if (!v.is_object()) return nullptr;
  const Value& state = v.as_object().state;
  if (!state.is_dict()) return nullptr;
  const Dict& d = state.as_dict();
  if (!d.contains(Value("_parameters")) || !d.contains(Value("_modules"))) return nullptr;
  return &d;
}

bool in_set(const Value* set, const Value& name) {
  if (set == nullptr || set->kind() != Value::Kind::Set) return false;
  for (const Value& v : set->as_set())
    if (v == name) return true;
  return false;
}

void add_tensor(StateDict& out, const std::string& name, const Value& v, const std::string& where) {
  if (v.is_none()) return;
  if (!v.is_tensor())
    throw TypeError("module attribute " + where + " is a " + std::string(v.kind_name()) + ", not a tensor");
  Tensor t = v.as_tensor();  // state_dict() holds detached tensors
  t.set_requires_grad(false);
  t.set_is_parameter(false);
  out.set(name, std::move(t));
}

}  // namespace

bool is_module_object(const Value& v) { return module_attributes(v) != nullptr; }

StateDict module_state_dict(const Value& module) {
  if (!is_module_object(module))
    throw TypeError("expected an nn.Module object (a torch.save(model) tree read with weights_only=false), got " +
                    (module.is_object() ? "an object of class " + module.as_object().qualified()
                                        : "a " + std::string(module.kind_name())));
  StateDict out;
  // Iterative pre-order walk: parameters, then persistent buffers, then
  // children, as Module._save_to_state_dict and Module.state_dict do.
  struct Frame {
    const Value* module;
    std::string prefix;
  };
  std::vector<Frame> stack{{&module, ""}};
  // Shared submodules are walked once per path (as Python lists them), and a
  // pickle can make the paths number 2^depth: bound the visits and the bytes
  // of names built on the way.
  size_t visited = 0, name_bytes = 0;
  while (!stack.empty()) {
    Frame f = std::move(stack.back());
    stack.pop_back();
    name_bytes += f.prefix.size();
    if (++visited > (size_t{1} << 18) || name_bytes > (size_t{256} << 20))
      throw LimitError("the module tree reaches its submodules through more than 262,144 paths (or 256 MiB of "
                       "names); refusing to build its state dict");
    const Dict& attrs = *module_attributes(*f.module);
    const Value& params = attrs.at(Value("_parameters"));
    if (params.is_dict())
      for (const auto& [k, v] : params.as_dict())
        if (k.is_string()) add_tensor(out, f.prefix + k.as_string(), v, f.prefix + "_parameters/" + k.as_string());
    const Value* buffers = attrs.find(Value("_buffers"));
    const Value* non_persistent = attrs.find(Value("_non_persistent_buffers_set"));
    if (buffers != nullptr && buffers->is_dict())
      for (const auto& [k, v] : buffers->as_dict())
        if (k.is_string() && !in_set(non_persistent, k))
          add_tensor(out, f.prefix + k.as_string(), v, f.prefix + "_buffers/" + k.as_string());
    const Value& children = attrs.at(Value("_modules"));
    if (!children.is_dict()) continue;
    const auto& items = children.as_dict().items();
    for (auto it = items.rbegin(); it != items.rend(); ++it) {  // reversed: the stack pops in order
      if (it->second.is_none() || !it->first.is_string()) continue;
      if (!is_module_object(it->second))
        throw TypeError("submodule " + f.prefix + it->first.as_string() + " is not an nn.Module object");
      stack.push_back({&it->second, f.prefix + it->first.as_string() + "."});
    }
  }
  return out;
}

}  // namespace ckpt
