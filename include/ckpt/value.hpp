// ckpt/value.hpp — the object tree a checkpoint holds.
//
// A Value is what a pickle describes, restricted to what a checkpoint
// contains: None, bool, int (64-bit; wider integers stay exact as BigInt),
// float, complex, str, bytes, list, tuple, dict (ordered, any hashable key),
// set, Tensor, a bare storage, and torch leaf types (dtype, device, Size).
// When a file is loaded with weights_only=false (inspection), a class that is
// not on the allow-list becomes an inert Object {module, name, args, state}
// and a bare reference to a class or function becomes a Global; they are
// printed and walked, never executed.
//
// Containers (list, tuple, dict, set, object) are shared: copying a Value
// copies a handle, as Python references do, so an object referenced twice in
// a pickle is one object here too. Values built by ckpt's loaders are
// guaranteed acyclic. Not synchronised: share across threads read-only.
#pragma once

#include <complex>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "ckpt/dtype.hpp"
#include "ckpt/tensor.hpp"

namespace ckpt {

class Value;
class Dict;
struct Object;
namespace detail {
struct DecoderMarks;  // the pickle decoder's bookkeeping on containers (src/pickle)
}

using List = std::vector<Value>;

// A storage saved on its own (not through a tensor): torch.save(t.untyped_storage()).
struct StorageValue {
  Storage storage;
  DType dtype = DType::uint8;  // element type of the (typed) storage
  std::string device = "cpu";
};

struct Device {
  std::string name;  // "cpu", "cuda:0", "mps", "meta"
  friend bool operator==(const Device&, const Device&) = default;
};

// torch.Size
struct Size {
  std::vector<int64_t> dims;
  friend bool operator==(const Size&, const Size&) = default;
};

// An integer that does not fit in int64: two's complement, little-endian,
// minimal length (as pickle's LONG1/LONG4 encode it).
struct BigInt {
  std::vector<uint8_t> bytes;
  std::string to_string() const;  // decimal
  friend bool operator==(const BigInt&, const BigInt&) = default;
};

// A reference to a class or function by name (inspection mode only).
struct Global {
  std::string module;
  std::string name;
  std::string qualified() const { return module + "." + name; }
  friend bool operator==(const Global&, const Global&) = default;
};

class Value {
 public:
  enum class Kind : uint8_t {
    None, Bool, Int, BigInt, Float, Complex, String, Bytes,
    List, Tuple, Dict, Set, Tensor, Storage, DType, Device, Size, Global, Object,
  };

  Value() noexcept = default;  // None
  Value(std::nullptr_t) noexcept {}
  Value(bool v) : v_(v) {}
  Value(int v) : v_(static_cast<int64_t>(v)) {}
  Value(int64_t v) : v_(v) {}
  Value(double v) : v_(v) {}
  Value(std::complex<double> v) : v_(v) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  Value(ckpt::Tensor t) : v_(Box<ckpt::Tensor>(std::move(t))) {}
  Value(StorageValue s) : v_(Box<StorageValue>(std::move(s))) {}
  Value(ckpt::DType d) : v_(d) {}
  Value(ckpt::Device d) : v_(std::move(d)) {}
  Value(ckpt::Size s) : v_(std::move(s)) {}
  Value(ckpt::BigInt b) : v_(std::move(b)) {}
  Value(ckpt::Global g) : v_(Box<ckpt::Global>(std::move(g))) {}
  Value(std::shared_ptr<ckpt::Dict> d);
  Value(std::shared_ptr<Object> o);

  // Factories for kinds that share a C++ type with another kind.
  static Value bytes(std::string b);
  // A Python bytearray: bytes that remember they were mutable in Python
  // (is_bytes() is true; is_bytearray() tells them apart).
  static Value bytearray(std::string b);
  static Value list(List items = {});
  static Value tuple(List items = {});
  static Value set(List items = {});
  static Value dict();  // an empty plain dict
  static Value ordered_dict();  // an empty collections.OrderedDict

  Kind kind() const noexcept;
  static std::string_view kind_name(Kind k) noexcept;
  std::string_view kind_name() const noexcept { return kind_name(kind()); }

  bool is_none() const noexcept { return kind() == Kind::None; }
  bool is_bool() const noexcept { return kind() == Kind::Bool; }
  bool is_int() const noexcept { return kind() == Kind::Int; }
  bool is_float() const noexcept { return kind() == Kind::Float; }
  bool is_string() const noexcept { return kind() == Kind::String; }
  bool is_bytes() const noexcept { return kind() == Kind::Bytes; }
  bool is_bytearray() const noexcept;
  bool is_list() const noexcept { return kind() == Kind::List; }
  bool is_tuple() const noexcept { return kind() == Kind::Tuple; }
  bool is_dict() const noexcept { return kind() == Kind::Dict; }
  bool is_tensor() const noexcept { return kind() == Kind::Tensor; }
  bool is_object() const noexcept { return kind() == Kind::Object; }

  // Accessors throw ckpt::TypeError naming the expected and actual kind.
  bool as_bool() const;
  int64_t as_int() const;  // Int (and Bool, as Python does)
  double as_float() const;  // Float, or Int/Bool converted
  std::complex<double> as_complex() const;
  const std::string& as_string() const;
  const std::string& as_bytes() const;
  // List, Tuple and Set share one representation: a vector of items.
  List& as_list() const;
  List& as_tuple() const;
  List& as_set() const;
  // Elements of a list or tuple (either kind).
  List& items() const;
  Dict& as_dict() const;
  const ckpt::Tensor& as_tensor() const;
  ckpt::Tensor& as_tensor();
  const StorageValue& as_storage() const;
  ckpt::DType as_dtype() const;
  const ckpt::Device& as_device() const;
  const ckpt::Size& as_size() const;
  const ckpt::BigInt& as_bigint() const;
  const ckpt::Global& as_global() const;
  Object& as_object() const;

  // Identity of a shared container (list/tuple/set/dict/object), else null.
  const void* container_id() const noexcept;

  // Python-like text: {'a': tensor(float32, [2, 3]), 'b': [1, 2.5, None]}.
  // Long containers and deep trees are abbreviated.
  std::string repr() const;

  // Deep structural equality; tensors compare by dtype, shape and bytes.
  // Numbers compare as Python does (True == 1 == 1.0).
  friend bool operator==(const Value& a, const Value& b);

  // Hash consistent with operator== for hashable kinds (None, numbers, str,
  // bytes, tuple of hashables, dtype, device, Size, Global); containers and
  // tensors hash by identity.
  size_t hash() const;
  // Whether Python would allow this value as a dict key.
  bool hashable() const noexcept;

 private:
  // A large alternative held out of line so that a Value stays small
  // (sizeof(Value) <= 48: a list of a million ints is 48 MB, not 150).
  // Copy on write: copying a Value shares the object (a memo read of a
  // tensor or a global costs no allocation); the non-const accessor gives
  // the Value its own copy first when another Value shares it, so Values
  // keep value semantics. A moved-from Box reads as a default object.
  template <class T>
  class Box {
   public:
    explicit Box(T v) : p_(std::make_shared<T>(std::move(v))) {}
    const T& get() const {
      static const T empty{};
      return p_ ? *p_ : empty;
    }
    T& get() {
      if (!p_)
        p_ = std::make_shared<T>();
      else if (p_.use_count() > 1)
        p_ = std::make_shared<T>(*p_);
      return *p_;
    }

   private:
    std::shared_ptr<T> p_;
  };
  struct Sequence {
    Kind kind;
    uint8_t decoder_mark = 0;  // private to the pickle decoder (detail::DecoderMarks)
    List items;
  };
  friend struct detail::DecoderMarks;
  struct BytesBox {
    std::string data;
    bool bytearray = false;
  };
  using Variant =
      std::variant<std::monostate, bool, int64_t, ckpt::BigInt, double, std::complex<double>,
                   std::string, BytesBox, std::shared_ptr<Sequence>, std::shared_ptr<ckpt::Dict>,
                   Box<ckpt::Tensor>, Box<StorageValue>, ckpt::DType, ckpt::Device, ckpt::Size,
                   Box<ckpt::Global>, std::shared_ptr<Object>>;
  Variant v_;
  static Value make_sequence(Kind kind, List items);
  [[noreturn]] void type_error(std::string_view expected) const;
};

// An ordered dict. Keys may be any hashable Value (strings, ints, tuples...).
// Insertion order is kept; setting an existing key keeps its position, as
// Python's dict does. A dict of up to kLinearMax items is searched linearly
// and has no hash index; a larger one keeps an open-addressing index, built
// when it grows past kLinearMax. Lookups never modify the dict.
class Dict {
 public:
  using Item = std::pair<Value, Value>;

  bool ordered = false;  // collections.OrderedDict rather than dict
  // Attributes set on the dict object by BUILD (a state dict's `_metadata`).
  // A Dict (possibly empty), or None when the pickle had no BUILD.
  Value attributes;

  size_t size() const noexcept { return items_.size(); }
  bool empty() const noexcept { return items_.empty(); }
  auto begin() const noexcept { return items_.begin(); }
  auto end() const noexcept { return items_.end(); }
  auto begin() noexcept { return items_.begin(); }
  auto end() noexcept { return items_.end(); }
  const std::vector<Item>& items() const noexcept { return items_; }

  Value* find(const Value& key);
  const Value* find(const Value& key) const;
  bool contains(const Value& key) const { return find(key) != nullptr; }
  // Throws ckpt::TypeError ("key 'x' not found") when absent.
  Value& at(const Value& key);
  const Value& at(const Value& key) const;

  // Inserts or overwrites. Throws ckpt::TypeError for unhashable keys.
  void set(Value key, Value value);
  bool erase(const Value& key);
  void reserve(size_t n);
  void clear();

  static constexpr size_t kLinearMax = 8;
  // Whether the hash index exists (size() > kLinearMax), for tests.
  bool indexed() const noexcept { return index_ != nullptr; }

  Dict() = default;
  Dict(const Dict& o);
  Dict(Dict&&) noexcept = default;
  Dict& operator=(const Dict& o);
  Dict& operator=(Dict&&) noexcept = default;
  ~Dict() = default;

 private:
  struct Index;
  struct IndexDeleter {
    void operator()(Index* p) const noexcept;
  };
  static constexpr size_t npos = static_cast<size_t>(-1);
  friend struct detail::DecoderMarks;
  uint8_t decoder_mark_ = 0;  // private to the pickle decoder; not copied
  std::vector<Item> items_;
  std::unique_ptr<Index, IndexDeleter> index_;  // null while size() <= kLinearMax
  size_t position(const Value& key) const;       // of key in items_, or npos
  void build_index();
};

// An instance of a class that is not on the allow-list, kept inert
// (inspection mode only): how the pickle constructed it, nothing more.
struct Object {
  std::string module;
  std::string name;
  std::string how;       // "REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"
  Value args;            // a Tuple
  Value kwargs;          // NEWOBJ_EX keyword arguments (Dict) or None
  Value state;           // BUILD argument, None when never built
  List list_items;       // APPEND/APPENDS onto the object (list subclasses)
  std::vector<Dict::Item> dict_items;  // SETITEM(S) onto the object (dict subclasses)
  std::string qualified() const { return module + "." + name; }
};

static_assert(sizeof(Value) <= 48, "a Value holds large alternatives out of line");

// Inline: the decoders ask it several times per object they build.
inline Value::Kind Value::kind() const noexcept {
  static constexpr Kind kByIndex[] = {Kind::None,    Kind::Bool,   Kind::Int,     Kind::BigInt, Kind::Float,
                                      Kind::Complex, Kind::String, Kind::Bytes,   Kind::List,   Kind::Dict,
                                      Kind::Tensor,  Kind::Storage, Kind::DType,  Kind::Device, Kind::Size,
                                      Kind::Global,  Kind::Object};
  static_assert(std::size(kByIndex) == std::variant_size_v<Variant>);
  const size_t i = v_.index();
  if (i == 8) return std::get<8>(v_)->kind;  // list, tuple or set
  return i < std::size(kByIndex) ? kByIndex[i] : Kind::None;  // valueless after a failed assignment
}

}  // namespace ckpt
