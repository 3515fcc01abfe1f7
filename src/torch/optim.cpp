// The LibTorch adapter: optimizer state in Python's layout.
//
// Python's optimizer.state_dict() is
//   {'state': {0: {'step': tensor(3.), 'exp_avg': ..., ...}, 1: {...}},
//    'param_groups': [{'lr': 0.001, 'betas': (0.9, 0.999), ..., 'params': [0, 1]}]}
// with parameters numbered across groups in order. LibTorch keeps the same
// information in Optimizer::state() (keyed by each parameter's TensorImpl:
// as a string in LibTorch 1.13, as a pointer in 2.x) and in per-group
// options objects. The hyper-parameter keys Python writes, and their order,
// were taken from torch 1.13.1 and torch 2.15.0.
#include <torch/version.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "ckpt/error.hpp"
#include "ckpt/torch.hpp"

namespace ckpt::torch {
namespace {

namespace optim = ::torch::optim;

enum class Kind { sgd, adam, adamw, rmsprop, adagrad };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::sgd: return "SGD";
    case Kind::adam: return "Adam";
    case Kind::adamw: return "AdamW";
    case Kind::rmsprop: return "RMSprop";
    case Kind::adagrad: return "Adagrad";
  }
  return "?";
}

Kind kind_of(const optim::Optimizer& o) {
  if (dynamic_cast<const optim::SGD*>(&o)) return Kind::sgd;
  if (dynamic_cast<const optim::AdamW*>(&o)) return Kind::adamw;
  if (dynamic_cast<const optim::Adam*>(&o)) return Kind::adam;
  if (dynamic_cast<const optim::RMSprop*>(&o)) return Kind::rmsprop;
  if (dynamic_cast<const optim::Adagrad*>(&o)) return Kind::adagrad;
  throw UnsupportedError(std::string("optimizer ") + typeid(o).name() +
                         " is not supported (SGD, Adam, AdamW, RMSprop and Adagrad are)");
}

bool layout_is_v1(PythonLayout layout) {
  if (layout == PythonLayout::native) return TORCH_VERSION_MAJOR < 2;
  return layout == PythonLayout::torch1_13;
}

// The key of a parameter in Optimizer::state(), whichever type this LibTorch uses.
template <class Map>
typename Map::key_type state_key(const Map&, const ::torch::Tensor& p) {
  using K = typename Map::key_type;
  if constexpr (std::is_same_v<K, std::string>) {
    std::ostringstream s;
    s << static_cast<const void*>(p.unsafeGetTensorImpl());
    return s.str();
  } else {
    return static_cast<K>(p.unsafeGetTensorImpl());
  }
}

// Python writes the hyper-parameters whose default is the int 0 as ints when
// left at 0; floats otherwise.
Value number(double v, bool int_when_zero) {
  if (int_when_zero && v == 0.0) return Value(int64_t{0});
  return Value(v);
}

Value step_tensor(int64_t step) {
  ckpt::Tensor t = ckpt::Tensor::empty(DType::float32, {});
  const float f = static_cast<float>(step);
  std::memcpy(t.mutable_data(), &f, sizeof f);
  return Value(t);
}

Value tensor_value(const ::torch::Tensor& t) { return Value(from_torch(t.detach())); }

// ---- Adam and AdamW: one implementation, parameterised by decoupled weight
// decay (AdamW). LibTorch gives the two distinct options and state classes of
// the same shape; Python writes the same keys but for the ones noted.
template <bool Decoupled>
using AdamOptionsOf = std::conditional_t<Decoupled, optim::AdamWOptions, optim::AdamOptions>;
template <bool Decoupled>
using AdamStateOf = std::conditional_t<Decoupled, optim::AdamWParamState, optim::AdamParamState>;

template <bool Decoupled>
void adam_param_group(const optim::OptimizerOptions& base, bool v1, Dict& d) {
  const auto& o = static_cast<const AdamOptionsOf<Decoupled>&>(base);
  const std::tuple<double, double> betas = o.betas();
  d.set("lr", o.lr());
  d.set("betas", Value::tuple({std::get<0>(betas), std::get<1>(betas)}));
  d.set("eps", o.eps());
  d.set("weight_decay", number(o.weight_decay(), !Decoupled));  // AdamW's default is 0.01
  d.set("amsgrad", o.amsgrad());
  if (v1 && Decoupled) {  // torch 1.13's AdamW: fewer keys, in another order
    d.set("foreach", Value());
    d.set("maximize", false);
    d.set("capturable", false);
  } else {
    d.set("maximize", false);
    d.set("foreach", Value());
    d.set("capturable", false);
    d.set("differentiable", false);
    d.set("fused", v1 ? Value(false) : Value());
    if (!v1) d.set("decoupled_weight_decay", Decoupled);
  }
}

template <bool Decoupled>
void adam_param_state(const optim::OptimizerParamState& base, const optim::OptimizerOptions& opts, Dict& d) {
  const auto& st = static_cast<const AdamStateOf<Decoupled>&>(base);
  d.set("step", step_tensor(st.step()));
  d.set("exp_avg", tensor_value(st.exp_avg()));
  d.set("exp_avg_sq", tensor_value(st.exp_avg_sq()));
  if (static_cast<const AdamOptionsOf<Decoupled>&>(opts).amsgrad() && st.max_exp_avg_sq().defined()) {
    d.set("max_exp_avg_sq", tensor_value(st.max_exp_avg_sq()));
  }
}

Value param_group(Kind kind, const optim::OptimizerOptions& base, bool v1) {
  Value g = Value::dict();
  Dict& d = g.as_dict();
  switch (kind) {
    case Kind::sgd: {
      const auto& o = static_cast<const optim::SGDOptions&>(base);
      d.set("lr", o.lr());
      d.set("momentum", number(o.momentum(), true));
      d.set("dampening", number(o.dampening(), true));
      d.set("weight_decay", number(o.weight_decay(), true));
      d.set("nesterov", o.nesterov());
      d.set("maximize", false);
      d.set("foreach", Value());
      d.set("differentiable", false);
      if (!v1) d.set("fused", Value());
      break;
    }
    case Kind::adam: adam_param_group<false>(base, v1, d); break;
    case Kind::adamw: adam_param_group<true>(base, v1, d); break;
    case Kind::rmsprop: {
      const auto& o = static_cast<const optim::RMSpropOptions&>(base);
      d.set("lr", o.lr());
      d.set("momentum", number(o.momentum(), true));
      d.set("alpha", o.alpha());
      d.set("eps", o.eps());
      d.set("centered", o.centered());
      d.set("weight_decay", number(o.weight_decay(), true));
      if (!v1) d.set("capturable", false);
      d.set("foreach", Value());
      d.set("maximize", false);
      d.set("differentiable", false);
      break;
    }
    case Kind::adagrad: {
      const auto& o = static_cast<const optim::AdagradOptions&>(base);
      d.set("lr", o.lr());
      d.set("lr_decay", number(o.lr_decay(), true));
      d.set("eps", o.eps());
      d.set("weight_decay", number(o.weight_decay(), true));
      d.set("initial_accumulator_value", number(o.initial_accumulator_value(), true));
      d.set("foreach", Value());
      d.set("maximize", false);
      if (!v1) {
        d.set("differentiable", false);
        d.set("fused", Value());
      }
      break;
    }
  }
  return g;
}

// Python's per-parameter state, or None when the parameter has none.
Value param_state(Kind kind, const optim::OptimizerParamState& base, const optim::OptimizerOptions& opts,
                  bool v1) {
  Value s = Value::dict();
  Dict& d = s.as_dict();
  switch (kind) {
    case Kind::sgd: {
      const auto& st = static_cast<const optim::SGDParamState&>(base);
      if (!st.momentum_buffer().defined()) return Value();
      d.set("momentum_buffer", tensor_value(st.momentum_buffer()));
      break;
    }
    case Kind::adam: adam_param_state<false>(base, opts, d); break;
    case Kind::adamw: adam_param_state<true>(base, opts, d); break;
    case Kind::rmsprop: {
      const auto& st = static_cast<const optim::RMSpropParamState&>(base);
      const auto& o = static_cast<const optim::RMSpropOptions&>(opts);
      d.set("step", v1 ? Value(st.step()) : step_tensor(st.step()));
      d.set("square_avg", tensor_value(st.square_avg()));
      if (o.momentum() > 0 && st.momentum_buffer().defined()) {
        d.set("momentum_buffer", tensor_value(st.momentum_buffer()));
      }
      if (o.centered() && st.grad_avg().defined()) d.set("grad_avg", tensor_value(st.grad_avg()));
      break;
    }
    case Kind::adagrad: {
      const auto& st = static_cast<const optim::AdagradParamState&>(base);
      d.set("step", step_tensor(st.step()));
      d.set("sum", tensor_value(st.sum()));
      break;
    }
  }
  return s;
}

// ---- loading ------------------------------------------------------------------

std::string where(int64_t index, std::string_view key) {
  return "optimizer state for parameter " + std::to_string(index) + ": '" + std::string(key) + "'";
}

// A 'step' as Python wrote it: a tensor (float32 0-dim), an int or a float.
int64_t step_of(const Value& v, int64_t index) {
  if (v.is_tensor()) {
    const ckpt::Tensor& t = v.as_tensor();
    if (t.numel() != 1) throw TypeError(where(index, "step") + " is a tensor with " + std::to_string(t.numel()) + " elements");
    return static_cast<int64_t>(std::llround(to_torch(t, {.use_device = false}).item<double>()));
  }
  if (v.is_int() || v.is_bool()) return v.as_int();
  if (v.is_float()) return static_cast<int64_t>(std::llround(v.as_float()));
  throw TypeError(where(index, "step") + " is a " + std::string(v.kind_name()));
}

// A state tensor, moved to the parameter's device and (floating point) dtype.
::torch::Tensor state_tensor(const Dict& st, std::string_view key, const ::torch::Tensor& param,
                             int64_t index, bool required) {
  const Value* v = st.find(Value(key));
  if (!v || v->is_none()) {
    if (required) throw TypeError(where(index, key) + " is missing");
    return {};
  }
  if (!v->is_tensor()) throw TypeError(where(index, key) + " is a " + std::string(v->kind_name()) + ", not a tensor");
  ::torch::Tensor t = to_torch(v->as_tensor(), {.use_device = false});
  if (t.sizes() != param.sizes()) {
    throw TypeError(where(index, key) + " has shape " + format_shape(v->as_tensor().sizes()) +
                    ", the parameter has shape " + format_shape({param.sizes().begin(), param.sizes().end()}));
  }
  if (t.is_floating_point() || t.is_complex()) {
    t = t.to(param.device(), param.scalar_type());
  } else {
    t = t.to(param.device());
  }
  return t.detach();
}

double get_float(const Dict& g, std::string_view key, double fallback) {
  const Value* v = g.find(Value(key));
  return v && !v->is_none() ? v->as_float() : fallback;
}
bool get_bool(const Dict& g, std::string_view key, bool fallback) {
  const Value* v = g.find(Value(key));
  return v && !v->is_none() ? v->as_bool() : fallback;
}

template <bool Decoupled, class BetasOf>
void set_adam_options(optim::OptimizerOptions& base, const Dict& g, size_t gi, const BetasOf& betas_of) {
  auto& o = static_cast<AdamOptionsOf<Decoupled>&>(base);
  o.lr(get_float(g, "lr", o.lr()));
  o.betas(betas_of(o.betas()));
  o.eps(get_float(g, "eps", o.eps()));
  o.weight_decay(get_float(g, "weight_decay", o.weight_decay()));
  o.amsgrad(get_bool(g, "amsgrad", o.amsgrad()));
  if (!Decoupled && get_bool(g, "decoupled_weight_decay", false)) {
    throw UnsupportedError("param_groups[" + std::to_string(gi) +
                           "]: Adam with decoupled_weight_decay=True: load it into an AdamW");
  }
}

void set_group_options(Kind kind, optim::OptimizerOptions& base, const Dict& g, size_t gi) {
  if (get_bool(g, "maximize", false)) {
    throw UnsupportedError("param_groups[" + std::to_string(gi) + "]: maximize=True: LibTorch's " +
                           kind_name(kind) + " cannot maximize");
  }
  auto betas_of = [&](std::tuple<double, double> current) {
    const Value* v = g.find(Value("betas"));
    if (!v || v->is_none()) return current;
    const List& b = v->items();
    if (b.size() != 2) throw TypeError("param_groups[" + std::to_string(gi) + "]: 'betas' must have 2 items");
    return std::make_tuple(b[0].as_float(), b[1].as_float());
  };
  switch (kind) {
    case Kind::sgd: {
      auto& o = static_cast<optim::SGDOptions&>(base);
      o.lr(get_float(g, "lr", o.lr()));
      o.momentum(get_float(g, "momentum", o.momentum()));
      o.dampening(get_float(g, "dampening", o.dampening()));
      o.weight_decay(get_float(g, "weight_decay", o.weight_decay()));
      o.nesterov(get_bool(g, "nesterov", o.nesterov()));
      break;
    }
    case Kind::adam: set_adam_options<false>(base, g, gi, betas_of); break;
    case Kind::adamw: set_adam_options<true>(base, g, gi, betas_of); break;
    case Kind::rmsprop: {
      auto& o = static_cast<optim::RMSpropOptions&>(base);
      o.lr(get_float(g, "lr", o.lr()));
      o.momentum(get_float(g, "momentum", o.momentum()));
      o.alpha(get_float(g, "alpha", o.alpha()));
      o.eps(get_float(g, "eps", o.eps()));
      o.centered(get_bool(g, "centered", o.centered()));
      o.weight_decay(get_float(g, "weight_decay", o.weight_decay()));
      break;
    }
    case Kind::adagrad: {
      auto& o = static_cast<optim::AdagradOptions&>(base);
      o.lr(get_float(g, "lr", o.lr()));
      o.lr_decay(get_float(g, "lr_decay", o.lr_decay()));
      o.eps(get_float(g, "eps", o.eps()));
      o.weight_decay(get_float(g, "weight_decay", o.weight_decay()));
      o.initial_accumulator_value(get_float(g, "initial_accumulator_value", o.initial_accumulator_value()));
      break;
    }
  }
}

template <bool Decoupled>
std::unique_ptr<optim::OptimizerParamState> make_adam_state(int64_t step, const Dict& st, const ::torch::Tensor& p,
                                                            const optim::OptimizerOptions& opts, int64_t index) {
  auto s = std::make_unique<AdamStateOf<Decoupled>>();
  s->step(step);
  s->exp_avg(state_tensor(st, "exp_avg", p, index, true));
  s->exp_avg_sq(state_tensor(st, "exp_avg_sq", p, index, true));
  auto m = state_tensor(st, "max_exp_avg_sq", p, index, false);
  if (!m.defined() && static_cast<const AdamOptionsOf<Decoupled>&>(opts).amsgrad()) {
    m = ::torch::zeros_like(p, ::torch::MemoryFormat::Preserve);
  }
  if (m.defined()) s->max_exp_avg_sq(m);
  return s;
}

std::unique_ptr<optim::OptimizerParamState> make_state(Kind kind, const Dict& st, const ::torch::Tensor& p,
                                                       const optim::OptimizerOptions& opts, int64_t index) {
  auto step = [&]() -> int64_t {
    const Value* v = st.find(Value("step"));
    if (!v) throw TypeError(where(index, "step") + " is missing");
    return step_of(*v, index);
  };
  switch (kind) {
    case Kind::sgd: {
      auto t = state_tensor(st, "momentum_buffer", p, index, false);
      if (!t.defined()) return nullptr;
      auto s = std::make_unique<optim::SGDParamState>();
      s->momentum_buffer(t);
      return s;
    }
    case Kind::adam: return make_adam_state<false>(step(), st, p, opts, index);
    case Kind::adamw: return make_adam_state<true>(step(), st, p, opts, index);
    case Kind::rmsprop: {
      const auto& o = static_cast<const optim::RMSpropOptions&>(opts);
      auto s = std::make_unique<optim::RMSpropParamState>();
      s->step(step());
      s->square_avg(state_tensor(st, "square_avg", p, index, true));
      auto mb = state_tensor(st, "momentum_buffer", p, index, false);
      if (!mb.defined() && o.momentum() > 0) mb = ::torch::zeros_like(p, ::torch::MemoryFormat::Preserve);
      if (mb.defined()) s->momentum_buffer(mb);
      auto ga = state_tensor(st, "grad_avg", p, index, false);
      if (!ga.defined() && o.centered()) ga = ::torch::zeros_like(p, ::torch::MemoryFormat::Preserve);
      if (ga.defined()) s->grad_avg(ga);
      return s;
    }
    case Kind::adagrad: {
      auto s = std::make_unique<optim::AdagradParamState>();
      s->step(step());
      s->sum(state_tensor(st, "sum", p, index, true));
      return s;
    }
  }
  return nullptr;
}

}  // namespace

Value optimizer_state_dict(const optim::Optimizer& optimizer, PythonLayout layout) {
  const Kind kind = kind_of(optimizer);
  const bool v1 = layout_is_v1(layout);
  const auto& states = optimizer.state();
  Value state = Value::dict();
  Value groups = Value::list();
  int64_t index = 0;
  for (const auto& group : optimizer.param_groups()) {
    const auto& opts = group.options();
    Value g = param_group(kind, opts, v1);
    Value ids = Value::list();
    for (const auto& p : group.params()) {
      auto it = states.find(state_key(states, p));
      if (it != states.end() && it->second) {
        Value s = param_state(kind, *it->second, opts, v1);
        if (!s.is_none()) state.as_dict().set(index, s);
      }
      ids.as_list().push_back(index++);
    }
    g.as_dict().set("params", ids);
    groups.as_list().push_back(g);
  }
  Value root = Value::dict();
  root.as_dict().set("state", state);
  root.as_dict().set("param_groups", groups);
  return root;
}

void load_optimizer_state_dict(optim::Optimizer& optimizer, const Value& source,
                               const LoadOptimizerOptions& options) {
  const Kind kind = kind_of(optimizer);
  const Value& root = options.key.empty() ? source : lookup(source, options.key);
  if (!root.is_dict()) {
    throw TypeError(std::string("an optimizer state dict is a dict; got a ") + std::string(root.kind_name()));
  }
  const Dict& rd = root.as_dict();
  const Value* state_v = rd.find(Value("state"));
  const Value* groups_v = rd.find(Value("param_groups"));
  if (!state_v || !groups_v || !state_v->is_dict() || !groups_v->is_list()) {
    throw TypeError("not an optimizer state dict: it needs a dict 'state' and a list 'param_groups'");
  }
  auto& groups = optimizer.param_groups();
  const List& saved = groups_v->as_list();
  if (saved.size() != groups.size()) {
    throw TypeError("loaded state dict has a different number of parameter groups (" +
                    std::to_string(saved.size()) + " in the checkpoint, " + std::to_string(groups.size()) +
                    " in the " + kind_name(kind) + " optimizer)");
  }
  // Saved parameter id -> (group, parameter).
  std::unordered_map<int64_t, std::pair<size_t, size_t>> id_to_param;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    if (!saved[gi].is_dict()) throw TypeError("param_groups[" + std::to_string(gi) + "] is not a dict");
    const Dict& g = saved[gi].as_dict();
    const Value* params = g.find(Value("params"));
    if (!params || !(params->is_list() || params->is_tuple())) {
      throw TypeError("param_groups[" + std::to_string(gi) + "] has no 'params' list");
    }
    const List& ids = params->items();
    if (ids.size() != groups[gi].params().size()) {
      throw TypeError("loaded state dict contains a parameter group that doesn't match the size of "
                      "optimizer's group (param_groups[" + std::to_string(gi) + "]: " +
                      std::to_string(ids.size()) + " parameters in the checkpoint, " +
                      std::to_string(groups[gi].params().size()) + " in the optimizer)");
    }
    for (size_t pi = 0; pi < ids.size(); ++pi) id_to_param[ids[pi].as_int()] = {gi, pi};
  }
  // Everything is converted before the optimizer is touched, so that an error
  // leaves it as it was.
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    auto copy = groups[gi].options().clone();
    set_group_options(kind, *copy, saved[gi].as_dict(), gi);
  }
  auto& states = optimizer.state();
  using Key = typename std::remove_reference_t<decltype(states)>::key_type;
  std::vector<std::pair<Key, std::unique_ptr<optim::OptimizerParamState>>> fresh;
  for (const auto& [k, v] : state_v->as_dict()) {
    const int64_t id = k.as_int();
    auto it = id_to_param.find(id);
    if (it == id_to_param.end()) {
      throw TypeError("optimizer state for parameter " + std::to_string(id) + ": no such parameter in param_groups");
    }
    if (!v.is_dict()) throw TypeError("optimizer state for parameter " + std::to_string(id) + " is not a dict");
    const auto& group = groups[it->second.first];
    const auto& p = group.params()[it->second.second];
    auto opts = group.options().clone();
    set_group_options(kind, *opts, saved[it->second.first].as_dict(), it->second.first);
    auto s = make_state(kind, v.as_dict(), p, *opts, id);
    if (s) fresh.emplace_back(state_key(states, p), std::move(s));
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    set_group_options(kind, groups[gi].options(), saved[gi].as_dict(), gi);
  }
  states.clear();
  for (auto& [k, s] : fresh) states[k] = std::move(s);
  if (kind == Kind::adagrad) {
    // LibTorch's Adagrad expects a state for every parameter (its constructor
    // makes them, as Python's does).
    for (auto& group : groups) {
      const auto& o = static_cast<const optim::AdagradOptions&>(group.options());
      for (const auto& p : group.params()) {
        auto key = state_key(states, p);
        if (states.find(key) != states.end()) continue;
        auto s = std::make_unique<optim::AdagradParamState>();
        s->step(0);
        s->sum(::torch::full_like(p, o.initial_accumulator_value(), ::torch::MemoryFormat::Preserve));
        states[key] = std::move(s);
      }
    }
  }
}

void load_optimizer_state_dict(optim::Optimizer& optimizer, const std::string& path,
                               const LoadOptimizerOptions& options) {
  LoadOptions lo;
  lo.map_location = options.map_location;
  Value v = load(path, lo);
  try {
    load_optimizer_state_dict(optimizer, v, options);
  } catch (Error& e) {
    e.add_context(ErrorContext(path));
    throw;
  }
}

}  // namespace ckpt::torch
