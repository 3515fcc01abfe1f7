#include "ckpt/value.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <functional>

#include "ckpt/error.hpp"

namespace ckpt {

// ---------------------------------------------------------------- BigInt

std::string BigInt::to_string() const {
  if (bytes.empty()) return "0";
  // Two's complement little-endian -> sign + magnitude, then repeated
  // division by 10 on the magnitude (base 256 digits, most significant last).
  bool negative = (bytes.back() & 0x80) != 0;
  std::vector<uint8_t> mag = bytes;
  if (negative) {  // magnitude = ~x + 1
    unsigned carry = 1;
    for (auto& b : mag) {
      unsigned v = static_cast<uint8_t>(~b) + carry;
      b = static_cast<uint8_t>(v);
      carry = v >> 8;
    }
  }
  std::string digits;
  while (!mag.empty()) {
    unsigned rem = 0;
    for (size_t i = mag.size(); i-- > 0;) {
      unsigned cur = (rem << 8) | mag[i];
      mag[i] = static_cast<uint8_t>(cur / 10);
      rem = cur % 10;
    }
    digits.push_back(static_cast<char>('0' + rem));
    while (!mag.empty() && mag.back() == 0) mag.pop_back();
  }
  if (digits.empty()) digits.push_back('0');
  if (negative) digits.push_back('-');
  return {digits.rbegin(), digits.rend()};
}

// ---------------------------------------------------------------- Value

Value::Value(std::shared_ptr<ckpt::Dict> d) : v_(std::move(d)) {}
Value::Value(std::shared_ptr<Object> o) : v_(std::move(o)) {}

Value Value::bytes(std::string b) {
  Value v;
  v.v_ = BytesBox{std::move(b), false};
  return v;
}

Value Value::bytearray(std::string b) {
  Value v;
  v.v_ = BytesBox{std::move(b), true};
  return v;
}

bool Value::is_bytearray() const noexcept {
  auto* b = std::get_if<BytesBox>(&v_);
  return b && b->bytearray;
}

Value Value::list(List items) { return make_sequence(Kind::List, std::move(items)); }
Value Value::tuple(List items) { return make_sequence(Kind::Tuple, std::move(items)); }
Value Value::set(List items) { return make_sequence(Kind::Set, std::move(items)); }

Value Value::dict() { return Value(std::make_shared<ckpt::Dict>()); }
Value Value::ordered_dict() {
  auto d = std::make_shared<ckpt::Dict>();
  d->ordered = true;
  return Value(std::move(d));
}

std::string_view Value::kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::BigInt: return "int";
    case Kind::Float: return "float";
    case Kind::Complex: return "complex";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Set: return "set";
    case Kind::Tensor: return "Tensor";
    case Kind::Storage: return "Storage";
    case Kind::DType: return "dtype";
    case Kind::Device: return "device";
    case Kind::Size: return "Size";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
  }
  return "?";
}

void Value::type_error(std::string_view expected) const {
  std::string got(kind_name());
  if (kind() == Kind::Object) got += " " + as_object().qualified();
  throw TypeError("expected " + std::string(expected) + ", found " + got);
}

bool Value::as_bool() const {
  if (auto* b = std::get_if<bool>(&v_)) return *b;
  type_error("bool");
}
int64_t Value::as_int() const {
  if (auto* i = std::get_if<int64_t>(&v_)) return *i;
  if (auto* b = std::get_if<bool>(&v_)) return *b ? 1 : 0;
  type_error("int");
}
double Value::as_float() const {
  if (auto* d = std::get_if<double>(&v_)) return *d;
  if (auto* i = std::get_if<int64_t>(&v_)) return static_cast<double>(*i);
  if (auto* b = std::get_if<bool>(&v_)) return *b ? 1.0 : 0.0;
  type_error("float");
}
std::complex<double> Value::as_complex() const {
  if (auto* c = std::get_if<std::complex<double>>(&v_)) return *c;
  return {as_float(), 0.0};
}
const std::string& Value::as_string() const {
  if (auto* s = std::get_if<std::string>(&v_)) return *s;
  type_error("str");
}
const std::string& Value::as_bytes() const {
  if (auto* b = std::get_if<BytesBox>(&v_)) return b->data;
  type_error("bytes");
}
List& Value::as_list() const {
  auto* s = std::get_if<std::shared_ptr<Sequence>>(&v_);
  if (s && (*s)->kind == Kind::List) return (*s)->items;
  type_error("list");
}
List& Value::as_tuple() const {
  auto* s = std::get_if<std::shared_ptr<Sequence>>(&v_);
  if (s && (*s)->kind == Kind::Tuple) return (*s)->items;
  type_error("tuple");
}
List& Value::as_set() const {
  auto* s = std::get_if<std::shared_ptr<Sequence>>(&v_);
  if (s && (*s)->kind == Kind::Set) return (*s)->items;
  type_error("set");
}
List& Value::items() const {
  auto* s = std::get_if<std::shared_ptr<Sequence>>(&v_);
  if (s && (*s)->kind != Kind::Set) return (*s)->items;
  type_error("list or tuple");
}
Dict& Value::as_dict() const {
  if (auto* d = std::get_if<std::shared_ptr<ckpt::Dict>>(&v_)) return **d;
  type_error("dict");
}
const ckpt::Tensor& Value::as_tensor() const {
  if (auto* t = std::get_if<Box<ckpt::Tensor>>(&v_)) return t->get();
  type_error("Tensor");
}
ckpt::Tensor& Value::as_tensor() {
  if (auto* t = std::get_if<Box<ckpt::Tensor>>(&v_)) return t->get();
  type_error("Tensor");
}
const StorageValue& Value::as_storage() const {
  if (auto* s = std::get_if<Box<StorageValue>>(&v_)) return s->get();
  type_error("Storage");
}
ckpt::DType Value::as_dtype() const {
  if (auto* d = std::get_if<ckpt::DType>(&v_)) return *d;
  type_error("dtype");
}
const ckpt::Device& Value::as_device() const {
  if (auto* d = std::get_if<ckpt::Device>(&v_)) return *d;
  type_error("device");
}
const ckpt::Size& Value::as_size() const {
  if (auto* s = std::get_if<ckpt::Size>(&v_)) return *s;
  type_error("Size");
}
const ckpt::BigInt& Value::as_bigint() const {
  if (auto* b = std::get_if<ckpt::BigInt>(&v_)) return *b;
  type_error("big int");
}
const ckpt::Global& Value::as_global() const {
  if (auto* g = std::get_if<Box<ckpt::Global>>(&v_)) return g->get();
  type_error("global");
}
Object& Value::as_object() const {
  if (auto* o = std::get_if<std::shared_ptr<Object>>(&v_)) return **o;
  type_error("object");
}

const void* Value::container_id() const noexcept {
  if (auto* s = std::get_if<std::shared_ptr<Sequence>>(&v_)) return s->get();
  if (auto* d = std::get_if<std::shared_ptr<ckpt::Dict>>(&v_)) return d->get();
  if (auto* o = std::get_if<std::shared_ptr<Object>>(&v_)) return o->get();
  return nullptr;
}

// ---------------------------------------------------------------- repr

namespace {

constexpr size_t kReprMaxItems = 20;  // items shown per container before "..."
constexpr int kReprMaxDepth = 12;     // nesting shown before "..."
// Total length: containers shared through a pickle's memo can make the two
// limits above describe 20^12 items from a few hundred bytes of pickle (and
// repr() goes into error messages about such data).
constexpr size_t kReprMaxChars = size_t{64} << 10;

std::string quote(const std::string& s, char prefix = 0) {
  std::string out;
  if (prefix) out.push_back(prefix);
  out.push_back('\'');
  for (unsigned char c : s) {
    if (c == '\'' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || (prefix == 'b' && c >= 0x7f)) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('\'');
  return out;
}

std::string format_double(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  // Shortest representation that round-trips, like Python's repr.
  for (int prec = 1; prec <= 17; ++prec) {
    char b2[32];
    std::snprintf(b2, sizeof b2, "%.*g", prec, d);
    if (std::strtod(b2, nullptr) == d) {
      std::snprintf(buf, sizeof buf, "%s", b2);
      break;
    }
  }
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

void repr_into(const Value& v, std::string& out, int depth);

void repr_items(const List& items, std::string& out, int depth) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    if (i == kReprMaxItems) {
      out += "... (" + std::to_string(items.size()) + " items)";
      break;
    }
    repr_into(items[i], out, depth + 1);
  }
}

void repr_into(const Value& v, std::string& out, int depth) {
  if (out.size() > kReprMaxChars) return;  // Value::repr() cuts and marks it
  if (depth > kReprMaxDepth) {
    out += "...";
    return;
  }
  using K = Value::Kind;
  switch (v.kind()) {
    case K::None: out += "None"; break;
    case K::Bool: out += v.as_bool() ? "True" : "False"; break;
    case K::Int: out += std::to_string(v.as_int()); break;
    case K::BigInt: out += v.as_bigint().to_string(); break;
    case K::Float: out += format_double(v.as_float()); break;
    case K::Complex: {
      auto c = v.as_complex();
      out += '(';
      out += format_double(c.real());
      out += c.imag() < 0 ? '-' : '+';
      out += format_double(std::abs(c.imag()));
      out += "j)";
      break;
    }
    case K::String: out += quote(v.as_string()); break;
    case K::Bytes:
      if (v.is_bytearray()) out += "bytearray(";
      out += quote(v.as_bytes(), 'b');
      if (v.is_bytearray()) out += ")";
      break;
    case K::List:
      out += "[";
      repr_items(v.as_list(), out, depth);
      out += "]";
      break;
    case K::Tuple:
      out += "(";
      repr_items(v.as_tuple(), out, depth);
      if (v.as_tuple().size() == 1) out += ",";
      out += ")";
      break;
    case K::Set:
      out += v.as_set().empty() ? "set(" : "{";
      repr_items(v.as_set(), out, depth);
      out += v.as_set().empty() ? ")" : "}";
      break;
    case K::Dict: {
      const Dict& d = v.as_dict();
      out += d.ordered ? "OrderedDict({" : "{";
      size_t i = 0;
      for (const auto& [k, val] : d) {
        if (i) out += ", ";
        if (i == kReprMaxItems) {
          out += "... (" + std::to_string(d.size()) + " items)";
          break;
        }
        repr_into(k, out, depth + 1);
        out += ": ";
        repr_into(val, out, depth + 1);
        ++i;
      }
      out += d.ordered ? "})" : "}";
      break;
    }
    case K::Tensor: {
      const Tensor& t = v.as_tensor();
      out += "tensor(" + std::string(name(t.dtype())) + ", " + format_shape(t.sizes());
      if (t.device() != "cpu") out += ", device='" + t.device() + "'";
      if (t.is_parameter()) out += ", parameter";
      if (t.requires_grad()) out += ", requires_grad";
      out += ")";
      break;
    }
    case K::Storage: {
      const auto& s = v.as_storage();
      out += "storage(" + std::string(name(s.dtype)) + ", " + std::to_string(s.storage.nbytes()) +
             " bytes)";
      break;
    }
    case K::DType: out += "torch." + std::string(name(v.as_dtype())); break;
    case K::Device: out += "device('" + v.as_device().name + "')"; break;
    case K::Size: out += "torch.Size(" + format_shape(v.as_size().dims) + ")"; break;
    case K::Global: out += "<global " + v.as_global().qualified() + ">"; break;
    case K::Object: {
      const Object& o = v.as_object();
      out += o.qualified() + "(";
      bool first = true;
      if (o.args.kind() == K::Tuple && !o.args.as_tuple().empty()) {
        repr_items(o.args.as_tuple(), out, depth);
        first = false;
      }
      if (!o.state.is_none()) {
        if (!first) out += ", ";
        out += "state=";
        repr_into(o.state, out, depth + 1);
      }
      out += ")";
      break;
    }
  }
}

}  // namespace

std::string Value::repr() const {
  std::string out;
  repr_into(*this, out, 0);
  if (out.size() > kReprMaxChars) {
    out.resize(kReprMaxChars);
    out += "... (cut at " + std::to_string(kReprMaxChars) + " characters)";
  }
  return out;
}

// ---------------------------------------------------------------- equality and hashing

namespace {

bool is_number(Value::Kind k) {
  return k == Value::Kind::Bool || k == Value::Kind::Int || k == Value::Kind::Float;
}

// Depth-limited to protect against pathological inputs built by hand.
bool equal(const Value& a, const Value& b, int depth) {
  if (depth > 10000) throw Error("value comparison: nesting too deep");
  using K = Value::Kind;
  K ka = a.kind(), kb = b.kind();
  if (is_number(ka) && is_number(kb)) {
    if (ka == K::Float || kb == K::Float) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (ka != kb) return false;
  if (a.container_id() != nullptr && a.container_id() == b.container_id()) return true;
  switch (ka) {
    case K::None: return true;
    case K::BigInt: return a.as_bigint() == b.as_bigint();
    case K::Complex: return a.as_complex() == b.as_complex();
    case K::String: return a.as_string() == b.as_string();
    case K::Bytes: return a.as_bytes() == b.as_bytes() && a.is_bytearray() == b.is_bytearray();
    case K::List:
    case K::Tuple:
    case K::Set: {
      const List& x = ka == K::List ? a.as_list() : ka == K::Tuple ? a.as_tuple() : a.as_set();
      const List& y = ka == K::List ? b.as_list() : ka == K::Tuple ? b.as_tuple() : b.as_set();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!equal(x[i], y[i], depth + 1)) return false;
      return true;
    }
    case K::Dict: {
      const Dict& x = a.as_dict();
      const Dict& y = b.as_dict();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!equal(x.items()[i].first, y.items()[i].first, depth + 1)) return false;
        if (!equal(x.items()[i].second, y.items()[i].second, depth + 1)) return false;
      }
      return true;
    }
    case K::Tensor: {
      const Tensor& x = a.as_tensor();
      const Tensor& y = b.as_tensor();
      return x.requires_grad() == y.requires_grad() && x.is_parameter() == y.is_parameter() &&
             x.equal(y);
    }
    case K::Storage: {
      const auto& x = a.as_storage();
      const auto& y = b.as_storage();
      return x.dtype == y.dtype && x.storage.nbytes() == y.storage.nbytes() &&
             (x.storage.nbytes() == 0 ||
              std::memcmp(x.storage.data(), y.storage.data(), x.storage.nbytes()) == 0);
    }
    case K::DType: return a.as_dtype() == b.as_dtype();
    case K::Device: return a.as_device() == b.as_device();
    case K::Size: return a.as_size() == b.as_size();
    case K::Global: return a.as_global() == b.as_global();
    case K::Object: {
      const Object& x = a.as_object();
      const Object& y = b.as_object();
      return x.module == y.module && x.name == y.name && x.how == y.how &&
             equal(x.args, y.args, depth + 1) && equal(x.kwargs, y.kwargs, depth + 1) &&
             equal(x.state, y.state, depth + 1);
    }
    default: return false;
  }
}

size_t mix(size_t h, size_t v) { return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2)); }

}  // namespace

bool operator==(const Value& a, const Value& b) { return equal(a, b, 0); }

bool Value::hashable() const noexcept {
  switch (kind()) {
    case Kind::List:
    case Kind::Dict:
    case Kind::Set:
      return false;
    case Kind::Tuple:
      for (const auto& item : std::get<std::shared_ptr<Sequence>>(v_)->items)
        if (!item.hashable()) return false;
      return true;
    default:
      return true;
  }
}

size_t Value::hash() const {
  switch (kind()) {
    case Kind::None: return 0x6e6f6e65;
    case Kind::Bool:
    case Kind::Int: return std::hash<int64_t>{}(as_int());
    case Kind::Float: {
      double d = as_float();
      // Integral floats hash like the equal int (True == 1 == 1.0).
      if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.2e18)
        return std::hash<int64_t>{}(static_cast<int64_t>(d));
      return std::hash<double>{}(d);
    }
    case Kind::String: return std::hash<std::string>{}(as_string());
    case Kind::Bytes: return mix(0x62, std::hash<std::string>{}(as_bytes()));
    case Kind::BigInt: {
      size_t h = 0x6269;
      for (uint8_t b : as_bigint().bytes) h = mix(h, b);
      return h;
    }
    case Kind::Complex: return mix(std::hash<double>{}(as_complex().real()),
                                   std::hash<double>{}(as_complex().imag()));
    case Kind::Tuple: {
      size_t h = 0x7475;
      for (const auto& item : as_tuple()) h = mix(h, item.hash());
      return h;
    }
    case Kind::DType: return mix(0x6474, static_cast<size_t>(as_dtype()));
    case Kind::Device: return mix(0x6476, std::hash<std::string>{}(as_device().name));
    case Kind::Size: {
      size_t h = 0x737a;
      for (int64_t d : as_size().dims) h = mix(h, std::hash<int64_t>{}(d));
      return h;
    }
    case Kind::Global: return mix(std::hash<std::string>{}(as_global().module),
                                  std::hash<std::string>{}(as_global().name));
    case Kind::Tensor: return std::hash<const void*>{}(as_tensor().storage().id());
    case Kind::Storage: return std::hash<const void*>{}(as_storage().storage.id());
    default: return std::hash<const void*>{}(container_id());
  }
}

// ---------------------------------------------------------------- Dict

// Open addressing with linear probing over positions in items_. hashes[i] is
// items_[i].first.hash(); slots hold position + 1 (0: empty). At most half
// full. Covers items_[0, hashes.size()); index() extends it to every item.
struct Dict::Index {
  std::vector<size_t> hashes;
  std::vector<size_t> slots;

  void insert_slot(size_t h, size_t pos) {
    size_t mask = slots.size() - 1;
    size_t i = h & mask;
    while (slots[i] != 0) i = (i + 1) & mask;
    slots[i] = pos + 1;
  }
  void grow(size_t want) {
    if (2 * want <= slots.size()) return;
    size_t cap = 16;
    while (cap < 2 * want) cap *= 2;
    if (cap <= slots.size()) return;
    slots.assign(cap, 0);
    for (size_t pos = 0; pos < hashes.size(); ++pos) insert_slot(hashes[pos], pos);
  }
  void add(size_t h) {
    grow(hashes.size() + 1);
    hashes.push_back(h);
    insert_slot(h, hashes.size() - 1);
  }
};

void Dict::IndexDeleter::operator()(Index* p) const noexcept { delete p; }

void Dict::build_index() {
  if (items_.size() <= kLinearMax) {
    index_.reset();
    return;
  }
  index_.reset(new Index);
  index_->hashes.reserve(items_.size());
  index_->grow(items_.size());
  for (const auto& item : items_) index_->add(item.first.hash());
}

Dict::Dict(const Dict& o) : ordered(o.ordered), attributes(o.attributes), items_(o.items_) {
  if (o.index_) index_.reset(new Index(*o.index_));
}

Dict& Dict::operator=(const Dict& o) {
  if (this != &o) {
    Dict copy(o);
    *this = std::move(copy);
  }
  return *this;
}

size_t Dict::position(const Value& key) const {
  if (!index_) {
    for (size_t pos = 0; pos < items_.size(); ++pos)
      if (items_[pos].first == key) return pos;
    return npos;
  }
  const Index& ix = *index_;
  size_t h = key.hash();
  size_t mask = ix.slots.size() - 1;
  for (size_t i = h & mask; ix.slots[i] != 0; i = (i + 1) & mask) {
    size_t pos = ix.slots[i] - 1;
    if (ix.hashes[pos] == h && items_[pos].first == key) return pos;
  }
  return npos;
}

Value* Dict::find(const Value& key) {
  size_t pos = position(key);
  return pos == npos ? nullptr : &items_[pos].second;
}

const Value* Dict::find(const Value& key) const {
  size_t pos = position(key);
  return pos == npos ? nullptr : &items_[pos].second;
}

Value& Dict::at(const Value& key) {
  if (Value* v = find(key)) return *v;
  throw TypeError("key " + key.repr() + " not found");
}

const Value& Dict::at(const Value& key) const { return const_cast<Dict*>(this)->at(key); }

void Dict::set(Value key, Value value) {
  if (!key.hashable()) throw TypeError("unhashable dict key of type " + std::string(key.kind_name()));
  if (Value* v = find(key)) {
    *v = std::move(value);
    return;
  }
  size_t h = index_ ? key.hash() : 0;
  items_.emplace_back(std::move(key), std::move(value));
  if (index_)
    index_->add(h);
  else if (items_.size() > kLinearMax)
    build_index();
}

bool Dict::erase(const Value& key) {
  size_t pos = position(key);
  if (pos == npos) return false;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(pos));
  build_index();
  return true;
}

void Dict::reserve(size_t n) { items_.reserve(n); }

void Dict::clear() {
  items_.clear();
  index_.reset();
}

Value Value::make_sequence(Kind kind, List items) {
  Value v;
  v.v_ = std::make_shared<Sequence>(Sequence{kind, 0, std::move(items)});
  return v;
}

}  // namespace ckpt
