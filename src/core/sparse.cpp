#include "ckpt/sparse.hpp"

#include <array>
#include <string_view>

namespace ckpt {

namespace {

struct Layout {
  std::string_view name;
  std::array<std::string_view, 3> parts;  // "" where the layout has fewer
};
constexpr std::array<Layout, 5> kLayouts = {{
    {"sparse_coo", {"indices", "values", ""}},
    {"sparse_csr", {"crow_indices", "col_indices", "values"}},
    {"sparse_bsr", {"crow_indices", "col_indices", "values"}},
    {"sparse_csc", {"ccol_indices", "row_indices", "values"}},
    {"sparse_bsc", {"ccol_indices", "row_indices", "values"}},
}};

}  // namespace

std::optional<SparseTensor> as_sparse(const Value& v) {
  if (!v.is_object()) return std::nullopt;
  const Object& o = v.as_object();
  if (o.module != "torch._utils" || (o.name != "_rebuild_sparse_tensor" && o.name != "_rebuild_sparse_csr_tensor"))
    return std::nullopt;
  if (!o.args.is_tuple() || o.args.as_tuple().size() != 2) return std::nullopt;
  const List& args = o.args.as_tuple();
  if (args[0].kind() != Value::Kind::Global || args[0].as_global().module != "torch" || !args[1].is_tuple())
    return std::nullopt;
  const List& data = args[1].as_tuple();
  for (const auto& l : kLayouts) {
    if (l.name != args[0].as_global().name) continue;
    const size_t nparts = l.parts[2].empty() ? 2 : 3;
    if (data.size() < nparts + 1) return std::nullopt;
    SparseTensor s;
    s.layout = l.name;
    for (size_t i = 0; i < nparts; ++i) {
      if (!data[i].is_tensor()) return std::nullopt;
      s.parts.emplace_back(std::string(l.parts[i]), data[i].as_tensor());
    }
    const Value& size = data[nparts];
    if (size.kind() == Value::Kind::Size) {
      s.sizes = size.as_size().dims;
    } else if (size.is_tuple()) {
      for (const auto& d : size.as_tuple()) {
        if (!d.is_int()) return std::nullopt;
        s.sizes.push_back(d.as_int());
      }
    } else {
      return std::nullopt;
    }
    if (nparts == 2 && data.size() > 3 && data[3].is_bool()) s.is_coalesced = data[3].as_bool();
    return s;
  }
  return std::nullopt;
}

}  // namespace ckpt
