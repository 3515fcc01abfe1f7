// Training checkpoints in safetensors without pickle: the object tree as JSON
// in `__metadata__["ckpt.tree"]`, the tensors as ordinary safetensors entries
// named by their '/'-joined paths. See docs/formats/safetensors.md.
#include "formats/safetensors_tree.hpp"

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "ckpt/error.hpp"
#include "ckpt/tree.hpp"
#include "ckpt/sparse.hpp"

namespace ckpt::formats {
namespace {

using json = nlohmann::ordered_json;

constexpr size_t kMaxTreeDepth = 1000;

std::string base64_encode(const std::string& in) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8) |
                 static_cast<uint8_t>(in[i + 2]);
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
    out += tbl[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<uint8_t>(in[i + 1]) << 8;
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += i + 1 < in.size() ? tbl[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(const std::string& in, const std::string& where) {
  auto val = [&](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (in.size() % 4 != 0) throw FormatError("ckpt.tree: bad base64 in " + where);
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    int a = val(in[i]), b = val(in[i + 1]);
    int c = in[i + 2] == '=' ? 0 : val(in[i + 2]);
    int d = in[i + 3] == '=' ? 0 : val(in[i + 3]);
    if (a < 0 || b < 0 || c < 0 || d < 0 || (in[i + 2] == '=' && in[i + 3] != '=') ||
        (i + 4 < in.size() && (in[i + 2] == '=' || in[i + 3] == '=')))
      throw FormatError("ckpt.tree: bad base64 in " + where);
    uint32_t v = (a << 18) | (b << 12) | (c << 6) | d;
    out += static_cast<char>(v >> 16);
    if (in[i + 2] != '=') out += static_cast<char>((v >> 8) & 255);
    if (in[i + 3] != '=') out += static_cast<char>(v & 255);
  }
  return out;
}

// Decimal text -> BigInt (two's complement, little-endian, minimal length).
BigInt parse_bigint(const std::string& text) {
  size_t i = 0;
  const bool negative = !text.empty() && text[0] == '-';
  if (negative) i = 1;
  if (i == text.size() || text.size() > 100000) throw FormatError("ckpt.tree metadata: bad $int '" + text.substr(0, 40) + "'");
  std::vector<uint8_t> mag;  // little-endian magnitude
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') throw FormatError("ckpt.tree metadata: bad $int '" + text.substr(0, 40) + "'");
    unsigned carry = static_cast<unsigned>(text[i] - '0');
    for (auto& b : mag) {
      unsigned v = b * 10u + carry;
      b = static_cast<uint8_t>(v & 255u);
      carry = v >> 8;
    }
    while (carry) {
      mag.push_back(static_cast<uint8_t>(carry & 255u));
      carry >>= 8;
    }
  }
  mag.push_back(0);  // room for the sign bit
  if (negative) {    // two's complement: invert and add one
    unsigned carry = 1;
    for (auto& b : mag) {
      unsigned v = static_cast<uint8_t>(~b) + carry;
      b = static_cast<uint8_t>(v & 255u);
      carry = v >> 8;
    }
  }
  // minimal length: drop a top byte that only repeats the sign of the next
  while (mag.size() > 1 && ((mag.back() == 0 && !(mag[mag.size() - 2] & 0x80)) ||
                            (mag.back() == 0xff && (mag[mag.size() - 2] & 0x80))))
    mag.pop_back();
  return BigInt{std::move(mag)};
}

// ------------------------------------------------------------------ encode

struct ViewKey {
  const void* storage;
  DType dtype;
  int64_t offset;
  std::vector<int64_t> sizes, strides;
  bool operator<(const ViewKey& o) const {
    return std::tie(storage, dtype, offset, sizes, strides) < std::tie(o.storage, o.dtype, o.offset, o.sizes, o.strides);
  }
};

class Encoder {
 public:
  std::vector<std::pair<std::string, Tensor>> tensors;
  size_t aliases = 0;

  json encode(const Value& v, const std::string& path, size_t depth) {
    if (depth > kMaxTreeDepth)
      throw LimitError("checkpoint tree is deeper than " + std::to_string(kMaxTreeDepth) + " levels",
                       ErrorContext{"", path, std::nullopt});
    switch (v.kind()) {
      case Value::Kind::None: return nullptr;
      case Value::Kind::Bool: return v.as_bool();
      case Value::Kind::Int: return v.as_int();
      case Value::Kind::BigInt: return json{{"$int", v.as_bigint().to_string()}};
      case Value::Kind::Float: {
        double d = v.as_float();
        if (std::isnan(d)) return json{{"$float", "nan"}};
        if (std::isinf(d)) return json{{"$float", d > 0 ? "inf" : "-inf"}};
        return d;
      }
      case Value::Kind::Complex: {
        auto c = v.as_complex();
        return json{{"$complex", json::array({encode(Value(c.real()), path, depth + 1), encode(Value(c.imag()), path, depth + 1)})}};
      }
      case Value::Kind::String: return v.as_string();
      case Value::Kind::Bytes:
        return json{{v.is_bytearray() ? "$bytearray" : "$bytes", base64_encode(v.as_bytes())}};
      case Value::Kind::List: return encode_items(v.items(), path, depth);
      case Value::Kind::Tuple: return json{{"$tuple", encode_items(v.items(), path, depth)}};
      case Value::Kind::Set: return json{{"$set", encode_items(v.items(), path, depth)}};
      case Value::Kind::Dict: return encode_dict(v.as_dict(), path, depth);
      case Value::Kind::Tensor: return encode_tensor(v.as_tensor(), path);
      case Value::Kind::DType: return json{{"$dtype", std::string(name(v.as_dtype()))}};
      case Value::Kind::Device: return json{{"$device", v.as_device().name}};
      case Value::Kind::Size: return json{{"$size", v.as_size().dims}};
      default: break;
    }
    if (auto sparse = as_sparse(v))
      throw UnsupportedError("a sparse tensor (" + sparse->layout +
                                 ") cannot be stored in safetensors; save a torch checkpoint instead",
                             ErrorContext{"", path, std::nullopt});
    throw UnsupportedError("a " + std::string(v.kind_name()) +
                               " cannot be stored in a pickle-free safetensors checkpoint (only None, bool, int, "
                               "float, complex, str, bytes, list, tuple, set, dict, tensor, dtype, device, Size)",
                           ErrorContext{"", path, std::nullopt});
  }

 private:
  std::map<ViewKey, std::string> stored_;          // identical views -> their name
  std::unordered_set<std::string> names_;
  std::unordered_set<const void*> storages_;       // storages already written (in any view)

  static std::string join(const std::string& base, const std::string& part) {
    return base.empty() ? part : base + "/" + part;
  }

  json encode_items(const List& items, const std::string& path, size_t depth) {
    json a = json::array();
    for (size_t i = 0; i < items.size(); ++i) a.push_back(encode(items[i], join(path, std::to_string(i)), depth + 1));
    return a;
  }

  json encode_dict(const Dict& d, const std::string& path, size_t depth) {
    bool plain = !d.ordered && (d.attributes.is_none());
    for (const auto& [k, val] : d)
      if (!k.is_string() || (!k.as_string().empty() && k.as_string()[0] == '$')) plain = false;
    if (plain) {
      json o = json::object();
      for (const auto& [k, val] : d) o[k.as_string()] = encode(val, join(path, k.as_string()), depth + 1);
      return o;
    }
    json items = json::array();
    for (const auto& [k, val] : d) {
      std::string part = path_component(k);
      items.push_back(json::array({encode(k, join(path, part), depth + 1), encode(val, join(path, part), depth + 1)}));
    }
    json o = {{"$dict", std::move(items)}};
    if (d.ordered) o["ordered"] = true;
    if (!d.attributes.is_none()) o["attributes"] = encode(d.attributes, join(path, "_metadata"), depth + 1);
    return o;
  }

  json encode_tensor(const Tensor& t, const std::string& path) {
    ViewKey key{t.storage().id(), t.dtype(), t.storage_offset(), t.sizes(), t.strides()};
    std::string name;
    auto it = t.defined() ? stored_.find(key) : stored_.end();
    if (it != stored_.end()) {
      name = it->second;  // the same view again: tied weights, stored once
      ++aliases;
    } else {
      name = path.empty() ? "tensor" : path;
      for (int n = 2; names_.count(name) != 0; ++n) name = path + "#" + std::to_string(n);
      names_.insert(name);
      // Another view of a storage already written may overlap it: write an
      // independent copy (safetensors entries cannot share bytes).
      Tensor stored = t;
      if (t.defined() && !storages_.insert(t.storage().id()).second) stored = t.clone();
      tensors.emplace_back(name, stored);
      if (t.defined()) stored_.emplace(std::move(key), name);
    }
    json o = {{"$tensor", name}};
    if (t.requires_grad()) o["requires_grad"] = true;
    if (t.is_parameter()) o["parameter"] = true;
    if (t.device() != "cpu") o["device"] = t.device();
    return o;
  }
};

// ------------------------------------------------------------------ decode

class Decoder {
 public:
  Decoder(const std::unordered_map<std::string, Tensor>& tensors, const LoadOptions& options)
      : tensors_(tensors), options_(options) {}

  Value decode(const json& j, size_t depth) {
    if (depth > kMaxTreeDepth) fail("nested deeper than " + std::to_string(kMaxTreeDepth) + " levels");
    switch (j.type()) {
      case json::value_t::null: return Value();
      case json::value_t::boolean: return Value(j.get<bool>());
      case json::value_t::number_integer: return Value(j.get<int64_t>());
      case json::value_t::number_unsigned: {
        uint64_t u = j.get<uint64_t>();
        if (u > static_cast<uint64_t>(INT64_MAX)) fail("integer out of range (big integers are {\"$int\": ...})");
        return Value(static_cast<int64_t>(u));
      }
      case json::value_t::number_float: return Value(j.get<double>());
      case json::value_t::string: return Value(j.get<std::string>());
      case json::value_t::array: {
        Value l = Value::list();
        for (const auto& e : j) l.as_list().push_back(decode(e, depth + 1));
        return l;
      }
      case json::value_t::object: return decode_object(j, depth);
      default: break;
    }
    fail("unexpected JSON value");
  }

 private:
  const std::unordered_map<std::string, Tensor>& tensors_;
  const LoadOptions& options_;

  [[noreturn]] static void fail(const std::string& what) { throw FormatError("ckpt.tree metadata: " + what); }

  const json& field(const json& o, const char* key, json::value_t type) {
    auto it = o.find(key);
    if (it == o.end() || it->type() != type) fail(std::string("\"") + key + "\" missing or of the wrong type");
    return *it;
  }

  List decode_items(const json& a, size_t depth) {
    if (!a.is_array()) fail("expected an array");
    List items;
    for (const auto& e : a) items.push_back(decode(e, depth + 1));
    return items;
  }

  Value decode_object(const json& o, size_t depth) {
    if (o.empty() || o.begin().key().empty() || o.begin().key()[0] != '$') {
      Value d = Value::dict();
      for (const auto& [k, v] : o.items()) d.as_dict().set(Value(k), decode(v, depth + 1));
      return d;
    }
    const std::string tag = o.begin().key();
    if (tag == "$tensor") {
      const std::string name = field(o, "$tensor", json::value_t::string).get<std::string>();
      auto it = tensors_.find(name);
      if (it == tensors_.end()) fail("refers to tensor '" + name + "', which the file does not hold");
      Tensor t = it->second;
      auto dev = o.find("device");
      if (dev != o.end() && dev->is_string()) t.set_device(options_.map_location.apply(dev->get<std::string>()));
      auto rg = o.find("requires_grad");
      if (rg != o.end() && rg->is_boolean()) t.set_requires_grad(rg->get<bool>());
      auto p = o.find("parameter");
      if (p != o.end() && p->is_boolean()) t.set_is_parameter(p->get<bool>());
      return Value(std::move(t));
    }
    if (tag == "$dict") {
      Value d = o.contains("ordered") && o["ordered"] == true ? Value::ordered_dict() : Value::dict();
      for (const auto& item : field(o, "$dict", json::value_t::array)) {
        if (!item.is_array() || item.size() != 2) fail("a $dict item is not a [key, value] pair");
        Value k = decode(item[0], depth + 1);
        if (!k.hashable()) fail("a $dict key is not hashable");
        d.as_dict().set(std::move(k), decode(item[1], depth + 1));
      }
      if (o.contains("attributes")) d.as_dict().attributes = decode(o["attributes"], depth + 1);
      return d;
    }
    if (tag == "$tuple") return Value::tuple(decode_items(o["$tuple"], depth));
    if (tag == "$set") return Value::set(decode_items(o["$set"], depth));
    if (tag == "$int") return Value(parse_bigint(field(o, "$int", json::value_t::string).get<std::string>()));
    if (tag == "$float") {
      const std::string s = field(o, "$float", json::value_t::string).get<std::string>();
      if (s == "nan") return Value(std::nan(""));
      if (s == "inf") return Value(HUGE_VAL);
      if (s == "-inf") return Value(-HUGE_VAL);
      fail("unknown $float '" + s + "'");
    }
    if (tag == "$complex") {
      const json& a = field(o, "$complex", json::value_t::array);
      if (a.size() != 2) fail("$complex needs [real, imag]");
      return Value(std::complex<double>(decode(a[0], depth + 1).as_float(), decode(a[1], depth + 1).as_float()));
    }
    if (tag == "$bytes") return Value::bytes(base64_decode(field(o, "$bytes", json::value_t::string).get<std::string>(), "$bytes"));
    if (tag == "$bytearray")
      return Value::bytearray(base64_decode(field(o, "$bytearray", json::value_t::string).get<std::string>(), "$bytearray"));
    if (tag == "$dtype") {
      const std::string s = field(o, "$dtype", json::value_t::string).get<std::string>();
      auto d = dtype_from_name(s);
      if (!d) fail("unknown dtype '" + s + "'");
      return Value(*d);
    }
    if (tag == "$device") return Value(Device{field(o, "$device", json::value_t::string).get<std::string>()});
    if (tag == "$size") {
      Size s;
      for (const auto& e : field(o, "$size", json::value_t::array)) {
        if (!e.is_number_integer()) fail("$size holds a non-integer");
        s.dims.push_back(e.get<int64_t>());
      }
      return Value(std::move(s));
    }
    fail("unknown tag '" + tag + "'");
  }
};

}  // namespace

TreeEncoding encode_tree(const Value& root) {
  Encoder enc;
  json tree = enc.encode(root, "", 0);
  TreeEncoding out;
  out.tensors = std::move(enc.tensors);
  out.aliases = enc.aliases;
  out.tree = tree.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::strict);
  return out;
}

Value decode_tree(const std::string& tree_json, const std::vector<std::pair<std::string, Tensor>>& tensors,
                  const LoadOptions& options) {
  json tree;
  try {
    tree = json::parse(tree_json);
  } catch (const json::parse_error& e) {
    throw FormatError(std::string("ckpt.tree metadata is not valid JSON: ") + e.what());
  }
  std::unordered_map<std::string, Tensor> by_name;
  for (const auto& [n, t] : tensors) by_name.emplace(n, t);
  Decoder dec(by_name, options);
  return dec.decode(tree, 0);
}

}  // namespace ckpt::formats
