// ckpt diff A B [--rtol R] [--atol A] [--equal-nan] [--json] — what differs between two checkpoints.
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "ckpt/elements.hpp"
#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "progress.hpp"

namespace ckpt::cli {
namespace {

struct DiffArgs {
  std::string a, b;
  double rtol = 1e-5;  // torch.allclose's defaults
  double atol = 1e-8;
  bool equal_nan = false;
  bool json = false;
  ReadFlags read;
  bool tensors_only = false;
  std::string filter;
};

// Non-tensor leaves (numbers, strings, ...) by path, in tree order. Paths are
// built as for_each_tensor builds them.
void walk_values(const Value& v, const std::string& path, std::vector<std::pair<std::string, Value>>& out,
                 int depth = 0) {
  constexpr int kMaxDepth = 200;  // loaders guarantee acyclic trees; this bounds pathological depth
  if (depth > kMaxDepth) return;
  auto child = [&](const std::string& c) { return path.empty() ? c : path + "/" + c; };
  switch (v.kind()) {
    case Value::Kind::Dict:
      for (const auto& [k, x] : v.as_dict()) walk_values(x, child(path_component(k)), out, depth + 1);
      return;
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      const auto& items = v.items();
      for (size_t i = 0; i < items.size(); ++i) walk_values(items[i], child(std::to_string(i)), out, depth + 1);
      return;
    }
    case Value::Kind::Object: walk_values(v.as_object().state, path, out, depth + 1); return;
    case Value::Kind::Tensor:
    case Value::Kind::Storage: return;
    default: out.emplace_back(path.empty() ? "(root)" : path, v); return;
  }
}

struct TensorDiff {
  std::string path;
  const Tensor* a;
  const Tensor* b;
  bool dtype_changed = false;
  bool shape_changed = false;
  bool compared = false;  // values compared (same shape)
  uint64_t mismatched = 0;
  uint64_t nan_mismatched = 0;  // of which a NaN on one side (or both, without --equal-nan)
  double max_abs = 0, max_rel = 0;
  bool bitwise = false;  // raw dtypes: compared bit for bit
  bool differs() const { return dtype_changed || shape_changed || mismatched > 0; }
};

// Compares the elements of two tensors of equal shape, as torch.allclose:
// |a - b| <= atol + rtol * |b|; integers, bool and raw bits exactly.
void compare_values(TensorDiff& d, const DiffArgs& o) {
  const Tensor& a = *d.a;
  const Tensor& b = *d.b;
  const DType da = a.dtype(), db = b.dtype();
  const ElementClass ca = element_class(da), cb = element_class(db);
  d.compared = true;
  if (da == db && a.equal(b)) return;  // the same bytes: equal, NaNs included
  auto note = [&](double x, double y) {
    if (std::isnan(x) || std::isnan(y)) {
      if (!(o.equal_nan && std::isnan(x) && std::isnan(y))) {
        ++d.mismatched;
        ++d.nan_mismatched;
      }
      return;
    }
    if (x == y) return;  // includes equal infinities
    const double diff = std::fabs(x - y);
    if (!std::isfinite(diff) || diff > o.atol + o.rtol * std::fabs(y)) ++d.mismatched;
    d.max_abs = std::max(d.max_abs, diff);
    if (y != 0) d.max_rel = std::max(d.max_rel, diff / std::fabs(y));
  };
  if (ca == ElementClass::raw || cb == ElementClass::raw) {
    d.bitwise = true;
    if (da != db) {
      d.mismatched = static_cast<uint64_t>(a.numel());
      return;
    }
    for_each_element_pair(a, b, [&](const std::byte* x, const std::byte* y) {
      if (read_uint64(x, da) != read_uint64(y, db)) ++d.mismatched;
    });
    return;
  }
  const bool ints = (ca == ElementClass::signed_int || ca == ElementClass::boolean || ca == ElementClass::unsigned_int) &&
                    (cb == ElementClass::signed_int || cb == ElementClass::boolean || cb == ElementClass::unsigned_int);
  if (ints) {
    const bool ua = ca == ElementClass::unsigned_int, ub = cb == ElementClass::unsigned_int;
    for_each_element_pair(a, b, [&](const std::byte* x, const std::byte* y) {
      bool equal;
      double diff;
      if (ua || ub) {  // compare as 128-bit-safe: a negative never equals an unsigned
        const int64_t sx = ua ? 0 : read_int64(x, da), sy = ub ? 0 : read_int64(y, db);
        const uint64_t vx = ua ? read_uint64(x, da) : static_cast<uint64_t>(sx);
        const uint64_t vy = ub ? read_uint64(y, db) : static_cast<uint64_t>(sy);
        equal = vx == vy && sx >= 0 && sy >= 0;
        const double fx = ua ? static_cast<double>(vx) : static_cast<double>(sx);
        const double fy = ub ? static_cast<double>(vy) : static_cast<double>(sy);
        diff = std::fabs(fx - fy);
        if (!equal) {
          d.max_abs = std::max(d.max_abs, diff);
          if (fy != 0) d.max_rel = std::max(d.max_rel, diff / std::fabs(fy));
        }
      } else {
        const int64_t vx = read_int64(x, da), vy = read_int64(y, db);
        equal = vx == vy;
        if (!equal) {
          diff = std::fabs(static_cast<double>(vx) - static_cast<double>(vy));
          d.max_abs = std::max(d.max_abs, diff);
          if (vy != 0) d.max_rel = std::max(d.max_rel, diff / std::fabs(static_cast<double>(vy)));
        }
      }
      if (!equal) ++d.mismatched;
    });
    return;
  }
  if (ca == ElementClass::complex || cb == ElementClass::complex) {
    for_each_element_pair(a, b, [&](const std::byte* x, const std::byte* y) {
      const auto zx = read_complex(x, da), zy = read_complex(y, db);
      const uint64_t before = d.mismatched;
      note(zx.real(), zy.real());
      if (d.mismatched == before) note(zx.imag(), zy.imag());  // one element counts once
    });
    return;
  }
  for_each_element_pair(a, b, [&](const std::byte* x, const std::byte* y) { note(read_double(x, da), read_double(y, db)); });
}

std::string describe(const Tensor& t) { return std::string(name(t.dtype())) + " " + format_shape(t.sizes()); }

nlohmann::ordered_json number_or_null(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

int run_diff(const DiffArgs& o) {
  if (!(o.rtol >= 0) || !(o.atol >= 0)) throw Error("--rtol and --atol must be non-negative numbers");
  const std::optional<std::regex> filter = compile_filter(o.filter);
  const Loaded la = load_checkpoint(o.a, o.read);
  const Loaded lb = load_checkpoint(o.b, o.read);

  const auto ta = select_tensors(la.root, filter), tb = select_tensors(lb.root, filter);
  std::map<std::string, const Tensor*> in_b;
  for (const auto& r : tb) in_b.emplace(r.path, r.tensor);
  std::map<std::string, bool> in_a;
  for (const auto& r : ta) in_a.emplace(r.path, true);

  std::vector<TensorRef> only_a, only_b;
  std::vector<TensorDiff> common;
  uint64_t total_bytes = 0;
  for (const auto& r : ta) {
    auto it = in_b.find(r.path);
    if (it == in_b.end()) {
      only_a.push_back(r);
      continue;
    }
    TensorDiff d{r.path, r.tensor, it->second};
    d.dtype_changed = r.tensor->dtype() != it->second->dtype();
    d.shape_changed = r.tensor->sizes() != it->second->sizes();
    if (!d.shape_changed) total_bytes += r.tensor->nbytes() + it->second->nbytes();
    common.push_back(d);
  }
  for (const auto& r : tb)
    if (!in_a.count(r.path)) only_b.push_back(r);

  {
    Progress bar("diff", total_bytes, Progress::Unit::bytes);
    for (auto& d : common) {
      if (d.shape_changed) continue;
      bar.set_detail(d.path);
      compare_values(d, o);
      bar.advance(d.a->nbytes() + d.b->nbytes());
    }
    bar.finish();
  }

  // Non-tensor values.
  struct ValueDiff {
    std::string path;
    std::optional<Value> a, b;
  };
  std::vector<ValueDiff> values;
  if (!o.tensors_only) {
    std::vector<std::pair<std::string, Value>> va, vb;
    walk_values(la.root, "", va);
    walk_values(lb.root, "", vb);
    std::map<std::string, const Value*> mb;
    for (const auto& [p, v] : vb) mb.emplace(p, &v);
    std::map<std::string, bool> ma;
    for (const auto& [p, v] : va) {
      if (filter && !std::regex_search(p, *filter)) continue;
      ma.emplace(p, true);
      auto it = mb.find(p);
      if (it == mb.end()) values.push_back({p, v, std::nullopt});
      else if (!(v == *it->second) || v.kind() != it->second->kind()) values.push_back({p, v, *it->second});
    }
    for (const auto& [p, v] : vb)
      if (!ma.count(p) && (!filter || std::regex_search(p, *filter))) values.push_back({p, std::nullopt, v});
  }

  uint64_t differing = 0;
  for (const auto& d : common) differing += d.differs();
  // An exported ONNX model holds the weights under the exporter's names
  // (some folded or renamed): only the names both hold are compared.
  const bool onnx = la.format == Format::onnx || lb.format == Format::onnx;
  const bool equal = (onnx || (only_a.empty() && only_b.empty())) && differing == 0 && values.empty();

  if (o.json) {
    nlohmann::ordered_json out;
    out["a"] = o.a;
    out["b"] = o.b;
    out["format_a"] = std::string(format_name(la.format));
    out["format_b"] = std::string(format_name(lb.format));
    out["equal"] = equal;
    out["rtol"] = o.rtol;
    out["atol"] = o.atol;
    out["equal_nan"] = o.equal_nan;
    out["tensors_compared"] = common.size();
    auto side = [](const std::vector<TensorRef>& v) {
      auto arr = nlohmann::ordered_json::array();
      for (const auto& r : v)
        arr.push_back({{"path", r.path}, {"dtype", std::string(name(r.tensor->dtype()))}, {"shape", r.tensor->sizes()}});
      return arr;
    };
    out["only_in_a"] = side(only_a);
    out["only_in_b"] = side(only_b);
    auto& changed = out["changed"] = nlohmann::ordered_json::array();
    for (const auto& d : common) {
      if (!d.differs()) continue;
      nlohmann::ordered_json j;
      j["path"] = d.path;
      j["dtype"] = {std::string(name(d.a->dtype())), std::string(name(d.b->dtype()))};
      j["shape"] = {d.a->sizes(), d.b->sizes()};
      if (d.compared) {
        j["numel"] = d.a->numel();
        j["mismatched"] = d.mismatched;
        if (!d.bitwise) {
          j["nan_mismatched"] = d.nan_mismatched;
          j["max_abs"] = number_or_null(d.max_abs);
          j["max_rel"] = number_or_null(d.max_rel);
        }
      }
      changed.push_back(std::move(j));
    }
    auto& vals = out["values"] = nlohmann::ordered_json::array();
    for (const auto& v : values)
      vals.push_back({{"path", v.path},
                      {"a", v.a ? nlohmann::ordered_json(v.a->repr()) : nlohmann::ordered_json(nullptr)},
                      {"b", v.b ? nlohmann::ordered_json(v.b->repr()) : nlohmann::ordered_json(nullptr)}});
    std::printf("%s\n", out.dump(2).c_str());
    return equal ? kExitOk : kExitNegative;
  }

  const bool color = use_color(stdout);
  for (const auto& r : only_a)
    std::printf("%s %s  %s\n", paint("- only in A:", "31", color).c_str(), printable(r.path).c_str(), describe(*r.tensor).c_str());
  for (const auto& r : only_b)
    std::printf("%s %s  %s\n", paint("+ only in B:", "32", color).c_str(), printable(r.path).c_str(), describe(*r.tensor).c_str());
  for (const auto& d : common) {
    if (!d.differs()) continue;
    std::string line = paint("~ " + printable(d.path) + ":", "33", color);
    if (d.dtype_changed) line += " dtype " + std::string(name(d.a->dtype())) + " -> " + std::string(name(d.b->dtype())) + ";";
    if (d.shape_changed) line += " shape " + format_shape(d.a->sizes()) + " -> " + format_shape(d.b->sizes()) + ";";
    if (d.compared && d.mismatched > 0) {
      line += " " + thousands(d.mismatched) + " of " + thousands(static_cast<uint64_t>(d.a->numel())) + " elements differ";
      if (!d.bitwise) {
        line += " (";
        if (d.nan_mismatched) line += thousands(d.nan_mismatched) + " NaN, ";
        line += "max abs " + format_number(d.max_abs) + ", max rel " + format_number(d.max_rel) + ")";
      }
      line += ";";
    } else if (d.compared) {
      line += " values equal within tolerance;";
    }
    line.pop_back();
    std::printf("%s\n", line.c_str());
  }
  for (const auto& v : values) {
    const std::string a = v.a ? printable(v.a->repr()) : "(absent)";
    const std::string b = v.b ? printable(v.b->repr()) : "(absent)";
    std::printf("%s %s -> %s\n", paint("~ " + printable(v.path) + ":", "33", color).c_str(), a.c_str(), b.c_str());
  }
  std::printf("%s: %s tensors compared, %s differ, %s only in A, %s only in B, %s other values differ (rtol %s, atol %s%s)\n",
              equal ? "equal" : "different", thousands(common.size()).c_str(), thousands(differing).c_str(),
              thousands(only_a.size()).c_str(), thousands(only_b.size()).c_str(), thousands(values.size()).c_str(),
              format_number(o.rtol).c_str(), format_number(o.atol).c_str(), o.equal_nan ? ", NaN == NaN" : "");
  return equal ? kExitOk : kExitNegative;
}

}  // namespace

void register_diff(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<DiffArgs>();
  CLI::App* cmd = app.add_subcommand("diff", "Compare two checkpoints: keys, dtypes, shapes and values (exit 1 if they differ)");
  cmd->add_option("A", args->a, "First checkpoint")->required();
  cmd->add_option("B", args->b, "Second checkpoint (any format: a .pt against its .safetensors conversion)")->required();
  cmd->add_option("--rtol", args->rtol, "Relative tolerance, as torch.allclose (default 1e-05)");
  cmd->add_option("--atol", args->atol, "Absolute tolerance, as torch.allclose (default 1e-08)");
  cmd->add_flag("--equal-nan", args->equal_nan, "Count NaN in both as equal");
  cmd->add_flag("--tensors-only", args->tensors_only, "Ignore non-tensor values (epoch, step, strings, ...)");
  cmd->add_option("--filter", args->filter, "Only paths matching this regular expression");
  cmd->add_flag("--json", args->json, "Machine-readable output");
  add_read_flags(cmd, args->read);
  cmd->callback([args, exit_code] { *exit_code = run_diff(*args); });
}

}  // namespace ckpt::cli
