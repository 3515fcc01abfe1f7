#include "pickle/pickler.hpp"
#include "pickle/utf8.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <unordered_map>

#include "ckpt/error.hpp"
#include "ckpt/sparse.hpp"

namespace ckpt::pickle {

namespace {

constexpr size_t kBatchSize = 1000;  // CPython pickle: BATCHSIZE of APPENDS / SETITEMS
constexpr uint32_t kNoMemo = UINT32_MAX;

// Protocol-2 opcodes torch.save emits.
enum Op : char {
  MARK = '(', STOP = '.', NONE = 'N', BININT = 'J', BININT1 = 'K', BININT2 = 'M', BINFLOAT = 'G',
  BINUNICODE = 'X', EMPTY_LIST = ']', APPEND = 'a', APPENDS = 'e', EMPTY_TUPLE = ')', TUPLE = 't',
  EMPTY_DICT = '}', SETITEM = 's', SETITEMS = 'u', BINGET = 'h', LONG_BINGET = 'j', BINPUT = 'q',
  LONG_BINPUT = 'r', GLOBAL = 'c', REDUCE = 'R', BUILD = 'b', BINPERSID = 'Q', NEWOBJ = '\x81',
  PROTO = '\x80', TUPLE1 = '\x85', TUPLE2 = '\x86', TUPLE3 = '\x87', NEWTRUE = '\x88',
  NEWFALSE = '\x89', LONG1 = '\x8a', LONG4 = '\x8b',
};

// Minimal two's complement (what CPython's encode_long writes), dropping
// redundant sign bytes from a BigInt built by hand.
std::vector<uint8_t> minimal_twos_complement(std::vector<uint8_t> b) {
  while (b.size() > 1) {
    const uint8_t last = b.back(), prev = b[b.size() - 2];
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) b.pop_back();
    else break;
  }
  if (b.size() == 1 && b[0] == 0) b.clear();  // 0 is encoded with no bytes
  return b;
}

// Element type torch.save checks storage sharing with: the dtype of a typed
// storage, uint8 for an UntypedStorage (dtypes without a typed class).
DType sharing_dtype(DType d) { return info(d).storage_name.empty() ? DType::uint8 : d; }

}  // namespace

// ---- String identity
//
// CPython memoizes a str by object identity, so what matters is which strings
// torch.save's pickler sees as one object:
//  * strings of the value tree: one object per distinct value. In Python, keys
//    reused across dicts ('version' in every _metadata entry), interned
//    literals and '' are one object each, and the keys of one dict are
//    distinct values anyway  -> memoized by value (memo_str).
//  * constants that torch and pickle use: 'storage', 'latin1', and location
//    tags without a device index ('cpu', 'mps', 'meta'): interned literals,
//    the same objects as equal literals in the tree  -> memo_str as well.
//  * storage keys: str(len(id_map)) is made once per storage and reused for
//    every later reference to it; it is never the object of an equal string
//    in the tree (the _metadata key '0' of an nn.Sequential is written again)
//    -> memoized per storage.
//  * location tags with an index ("cuda" + ":" + str(index)), the device type
//    string of torch.device.__reduce__, the latin-1 text of a bytes object:
//    a new object each time  -> written (and memoized) every time.
struct TorchPickler::Impl {
  std::string out;
  std::vector<StorageRecord>& storages;
  uint32_t next_memo = 0;
  std::unordered_map<const void*, uint32_t> memo_obj;     // containers by identity
  std::unordered_map<std::string, uint32_t> memo_str;     // strings by value
  std::unordered_map<std::string, uint32_t> memo_global;  // "module\nname"
  std::unordered_map<const void*, size_t> storage_index;  // Storage::id() -> storages index
  std::vector<uint32_t> key_memo;                          // storages index -> memo of its key
  bool write_objects = false;

  Impl(std::vector<StorageRecord>& s, bool objects) : storages(s), write_objects(objects) {}

  // ---- raw output
  void op(char c) { out.push_back(c); }
  void u8(uint8_t v) { out.push_back(static_cast<char>(v)); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  // Memoizes the object on top of the stack; returns its memo index.
  uint32_t put_memo() {
    const uint32_t i = next_memo++;
    if (i < 256) {
      op(BINPUT);
      u8(static_cast<uint8_t>(i));
    } else {
      op(LONG_BINPUT);
      u32(i);
    }
    return i;
  }
  void get_memo(uint32_t i) {
    if (i < 256) {
      op(BINGET);
      u8(static_cast<uint8_t>(i));
    } else {
      op(LONG_BINGET);
      u32(i);
    }
  }

  // ---- scalars
  void save_int(int64_t v) {
    if (v >= 0 && v < 256) {
      op(BININT1);
      u8(static_cast<uint8_t>(v));
    } else if (v >= 0 && v < 65536) {
      op(BININT2);
      u8(static_cast<uint8_t>(v & 0xff));
      u8(static_cast<uint8_t>(v >> 8));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op(BININT);
      u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {
      std::vector<uint8_t> b(8);
      const auto u = static_cast<uint64_t>(v);
      for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>((u >> (8 * i)) & 0xff);
      save_long(minimal_twos_complement(std::move(b)));
    }
  }
  // LONG1 / LONG4 of minimal two's complement bytes.
  void save_long(const std::vector<uint8_t>& b) {
    if (b.size() < 256) {
      op(LONG1);
      u8(static_cast<uint8_t>(b.size()));
    } else {
      if (b.size() > INT32_MAX) throw Error("integer of " + std::to_string(b.size()) + " bytes is too large to pickle");
      op(LONG4);
      u32(static_cast<uint32_t>(b.size()));
    }
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
  }
  void save_bigint(const BigInt& big) {
    std::vector<uint8_t> b = minimal_twos_complement(big.bytes);
    if (b.size() > 8) return save_long(b);
    // Fits in int64 (a hand-made BigInt): CPython picks the opcode by value.
    uint64_t u = b.empty() || !(b.back() & 0x80) ? 0 : ~uint64_t{0};
    for (size_t i = 0; i < b.size(); ++i) {
      u &= ~(uint64_t{0xff} << (8 * i));
      u |= uint64_t{b[i]} << (8 * i);
    }
    save_int(static_cast<int64_t>(u));
  }
  void save_float(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    op(BINFLOAT);
    for (int i = 7; i >= 0; --i) u8(static_cast<uint8_t>((bits >> (8 * i)) & 0xff));  // big-endian
  }
  // BINUNICODE without memo lookup; memoizes the new object.
  uint32_t write_str(std::string_view s) {
    if (s.size() > UINT32_MAX) throw Error("string of " + std::to_string(s.size()) + " bytes is too long to pickle");
    if (!utf8::valid(s, /*allow_surrogates=*/true))  // what BINUNICODE loads (surrogatepass)
      throw Error("cannot save a string that is not valid UTF-8 (Python could not load it): " + Value(s).repr());
    op(BINUNICODE);
    u32(static_cast<uint32_t>(s.size()));
    out += s;
    return put_memo();
  }
  // A string that is one object per value (see "String identity").
  void save_str(const std::string& s) {
    auto it = memo_str.find(s);
    if (it != memo_str.end()) return get_memo(it->second);
    memo_str.emplace(s, write_str(s));
  }
  void save_global(std::string_view module, std::string_view name) {
    std::string key = std::string(module) + "\n" + std::string(name);
    auto it = memo_global.find(key);
    if (it != memo_global.end()) return get_memo(it->second);
    op(GLOBAL);
    out += key;
    op('\n');
    memo_global.emplace(std::move(key), put_memo());
  }
  // Before the elements of a tuple of `n` items / after them.
  void open_tuple(size_t n) {
    if (n > 3) op(MARK);
  }
  void close_tuple(size_t n) {
    op(n == 1 ? TUPLE1 : n == 2 ? TUPLE2 : n == 3 ? TUPLE3 : TUPLE);
    put_memo();
  }
  void reduce() {
    op(REDUCE);
    put_memo();
  }
  void empty_ordered_dict() {  // collections.OrderedDict()
    save_global("collections", "OrderedDict");
    op(EMPTY_TUPLE);
    reduce();
  }

  // ---- containers (CPython _pickle.c: batch_list_exact, batch_dict_exact, batch_dict)
  // A list: one item -> APPEND; more -> MARK ... APPENDS per batch of 1000.
  void save_list_items(const List& items, size_t depth) {
    if (items.size() == 1) {
      save(items[0], depth + 1);
      return op(APPEND);
    }
    for (size_t i = 0; i < items.size(); i += kBatchSize) {
      const size_t n = std::min(kBatchSize, items.size() - i);
      op(MARK);
      for (size_t k = 0; k < n; ++k) save(items[i + k], depth + 1);
      op(APPENDS);
    }
  }
  void save_item(const Dict::Item& item, size_t depth) {
    save(item.first, depth + 1);
    save(item.second, depth + 1);
  }
  // A dict: one item -> SETITEM; more -> MARK ... SETITEMS per batch of 1000,
  // and (as CPython's loop does) one empty batch after a full last batch.
  void save_dict_items(const Dict& d, size_t depth) {
    const auto& items = d.items();
    if (items.empty()) return;
    if (items.size() == 1) {
      save_item(items[0], depth);
      return op(SETITEM);
    }
    size_t i = 0, n;
    do {
      n = std::min(kBatchSize, items.size() - i);
      op(MARK);
      for (size_t k = 0; k < n; ++k) save_item(items[i + k], depth);
      op(SETITEMS);
      i += n;
    } while (n == kBatchSize);
  }
  // The items of a reduced object (OrderedDict), pickled from an iterator:
  // per batch, a last single item -> SETITEM, else MARK ... SETITEMS.
  void save_dict_items_iter(const Dict& d, size_t depth) {
    const auto& items = d.items();
    for (size_t i = 0; i < items.size();) {
      const size_t n = std::min(kBatchSize, items.size() - i);
      if (n == 1) {
        save_item(items[i], depth);
        op(SETITEM);
      } else {
        op(MARK);
        for (size_t k = 0; k < n; ++k) save_item(items[i + k], depth);
        op(SETITEMS);
      }
      i += n;
    }
  }
  bool memoized(const Value& v) {
    auto it = memo_obj.find(v.container_id());
    if (it == memo_obj.end()) return false;
    get_memo(it->second);
    return true;
  }
  // The next put_memo() memoizes container `v`.
  void remember(const Value& v) { memo_obj.emplace(v.container_id(), next_memo); }

  // ---- torch objects
  size_t storage_slot(const Storage& s, DType dtype) {
    auto it = storage_index.find(s.id());
    if (it != storage_index.end()) {
      const StorageRecord& r = storages[it->second];
      if (sharing_dtype(r.dtype) != sharing_dtype(dtype))
        throw Error("cannot save tensors or storages that view one storage as different types (" +
                    std::string(name(r.dtype)) + " and " + std::string(name(dtype)) +
                    "); torch.save refuses this too");
      return it->second;
    }
    storage_index.emplace(s.id(), storages.size());
    storages.push_back({std::to_string(storages.size()), s, dtype});
    key_memo.push_back(kNoMemo);
    return storages.size() - 1;
  }

  // Location tags: see "String identity".
  void save_location(const std::string& device) {
    if (device.find(':') == std::string::npos) save_str(device);
    else write_str(device);
  }

  // ('storage', <class>, key, location, numel) BINPERSID
  void save_persistent_storage(const Storage& s, DType dtype, const std::string& device) {
    if (!s) throw Error("cannot save a tensor or storage without data (an undefined storage)");
    const size_t slot = storage_slot(s, dtype);
    const bool typed = !info(dtype).storage_name.empty();
    const size_t esize = typed ? itemsize(dtype) : 1;
    if (s.nbytes() % esize != 0)
      throw Error("storage of " + std::to_string(s.nbytes()) + " bytes is not a whole number of " +
                  std::string(name(dtype)) + " elements");
    op(MARK);
    save_str("storage");
    if (typed) save_global("torch", info(dtype).storage_name);
    else save_global("torch.storage", "UntypedStorage");
    uint32_t& km = key_memo[slot];
    if (km == kNoMemo) km = write_str(storages[slot].key);
    else get_memo(km);
    save_location(device);
    save_int(static_cast<int64_t>(s.nbytes() / esize));
    close_tuple(5);
    op(BINPERSID);
  }

  void save_int_tuple(const std::vector<int64_t>& v) {
    if (v.empty()) return op(EMPTY_TUPLE);
    open_tuple(v.size());
    for (int64_t x : v) save_int(x);
    close_tuple(v.size());
  }

  // Tensor.__reduce_ex__ (torch 2.x _reduce_ex_internal, CPU tensors):
  //   _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())
  //   _rebuild_tensor_v3(untyped storage, offset, size, stride, requires_grad, OrderedDict(), dtype)
  void save_tensor_data(const Tensor& t, bool requires_grad) {
    if (!t.defined()) throw Error("cannot save an undefined tensor");
    if (info(t.dtype()).is_quantized) {
      if (t.quantization() == nullptr)
        throw Error("cannot save a quantized tensor (" + std::string(name(t.dtype())) +
                    ") without its quantizer parameters (Tensor::set_quantization); torch cannot rebuild it");
      return save_qtensor(t, *t.quantization(), requires_grad);
    }
    const bool typed = !info(t.dtype()).storage_name.empty();
    save_global("torch._utils", typed ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3");
    op(MARK);
    save_persistent_storage(t.storage(), t.dtype(), t.device());
    save_int(t.storage_offset());
    save_int_tuple(t.sizes());
    save_int_tuple(t.strides());
    op(requires_grad ? NEWTRUE : NEWFALSE);
    empty_ordered_dict();
    if (!typed) save_global("torch", name(t.dtype()));
    close_tuple(typed ? 6 : 7);
    reduce();
  }

  // QTensor.__reduce_ex__: _rebuild_qtensor(storage, offset, size, stride,
  //   (qscheme, scale, zero_point) | (qscheme, scales, zero_points, axis), requires_grad, OrderedDict())
  void save_qtensor(const Tensor& t, const Quantization& q, bool requires_grad) {
    save_global("torch._utils", "_rebuild_qtensor");
    op(MARK);
    save_persistent_storage(t.storage(), t.dtype(), t.device());
    save_int(t.storage_offset());
    save_int_tuple(t.sizes());
    save_int_tuple(t.strides());
    if (q.per_channel()) {
      open_tuple(4);
      save_global("torch", q.scheme);
      save_tensor(q.scales);
      save_tensor(q.zero_points);
      save_int(q.axis);
      close_tuple(4);
    } else {
      save_global("torch", q.scheme);
      save_float(q.scale);
      save_int(q.zero_point);
      close_tuple(3);
    }
    op(requires_grad ? NEWTRUE : NEWFALSE);
    empty_ordered_dict();
    close_tuple(7);
    reduce();
  }

  void save_tensor(const Tensor& t) {
    if (!t.is_parameter()) return save_tensor_data(t, t.requires_grad());
    // Parameter.__reduce_ex__: _rebuild_parameter(self.data, requires_grad, OrderedDict())
    save_global("torch._utils", "_rebuild_parameter");
    save_tensor_data(t, false);
    op(t.requires_grad() ? NEWTRUE : NEWFALSE);
    empty_ordered_dict();
    close_tuple(3);
    reduce();
  }

  // bytes under protocol 2: _codecs.encode(<latin-1 text>, 'latin1'), memoized
  // as the bytes object. (CPython writes b'' as __builtin__.bytes(), which
  // torch's weights-only loader refuses; the encode form loads everywhere.)
  void save_bytes(const std::string& data) {
    save_global("_codecs", "encode");
    std::string text;
    text.reserve(data.size());
    for (unsigned char c : data) {
      if (c < 0x80) {
        text += static_cast<char>(c);
      } else {
        text += static_cast<char>(0xC0 | (c >> 6));
        text += static_cast<char>(0x80 | (c & 0x3F));
      }
    }
    write_str(text);  // str(obj, 'latin1'): a new object
    save_str("latin1");
    close_tuple(2);
    reduce();
  }

  // torch.device.__reduce__: (torch.device, (type,)) or (torch.device, (type, index))
  void save_device(const std::string& n) {
    const size_t colon = n.find(':');
    int64_t index = 0;
    if (colon != std::string::npos) {
      const std::string_view digits = std::string_view(n).substr(colon + 1);
      if (digits.empty() || digits.size() > 9 ||
          !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
        throw Error("cannot save device '" + n + "': expected 'type' or 'type:index'");
      for (char c : digits) index = index * 10 + (c - '0');
    }
    save_global("torch", "device");
    write_str(n.substr(0, colon));  // a new str from the C++ device type name
    if (colon == std::string::npos) {
      close_tuple(1);
    } else {
      save_int(index);
      close_tuple(2);
    }
    reduce();
  }

  // An inert Object as the call that made it: cls, args, NEWOBJ (or
  // REDUCE), items, BUILD(state).
  void save_object(const Value& v, size_t depth) {
    if (memoized(v)) return;
    const Object& o = v.as_object();
    save_global(o.module, o.name);
    if (o.args.is_tuple()) save(o.args, depth + 1);
    else op(EMPTY_TUPLE);
    op(o.how == "NEWOBJ" ? NEWOBJ : REDUCE);
    remember(v);
    put_memo();
    if (!o.list_items.empty()) save_list_items(o.list_items, depth);
    for (const auto& [k, x] : o.dict_items) {
      save(k, depth + 1);
      save(x, depth + 1);
      op(SETITEM);
    }
    if (!o.state.is_none()) {
      save(o.state, depth + 1);
      op(BUILD);
    }
  }

  // ---- dispatch
  void save(const Value& v, size_t depth) {
    if (depth > kMaxDepth && v.container_id() != nullptr)
      throw Error("cannot save containers nested deeper than " + std::to_string(kMaxDepth) +
                  " levels (torch and ckpt could not load them)");
    switch (v.kind()) {
      case Value::Kind::None: return op(NONE);
      case Value::Kind::Bool: return op(v.as_bool() ? NEWTRUE : NEWFALSE);
      case Value::Kind::Int: return save_int(v.as_int());
      case Value::Kind::BigInt: return save_bigint(v.as_bigint());
      case Value::Kind::Float: return save_float(v.as_float());
      case Value::Kind::String: return save_str(v.as_string());
      case Value::Kind::Bytes: {
        if (!v.is_bytearray()) return save_bytes(v.as_bytes());
        // bytearray.__reduce_ex__(2): (bytearray, (bytes(self),)), or (bytearray, ()) when empty
        save_global("__builtin__", "bytearray");
        if (v.as_bytes().empty()) {
          op(EMPTY_TUPLE);
        } else {
          save_bytes(v.as_bytes());
          close_tuple(1);
        }
        return reduce();
      }
      case Value::Kind::Complex: {
        save_global("__builtin__", "complex");
        save_float(v.as_complex().real());
        save_float(v.as_complex().imag());
        close_tuple(2);
        return reduce();
      }
      case Value::Kind::List: {
        if (memoized(v)) return;
        op(EMPTY_LIST);
        remember(v);
        put_memo();
        return save_list_items(v.as_list(), depth);
      }
      case Value::Kind::Tuple: {
        if (memoized(v)) return;
        const List& items = v.as_tuple();
        if (items.empty()) return op(EMPTY_TUPLE);  // not memoized (CPython)
        open_tuple(items.size());
        for (const auto& x : items) save(x, depth + 1);
        remember(v);
        return close_tuple(items.size());
      }
      case Value::Kind::Set: {
        // set.__reduce__ under protocol 2: (set, (list(self),))
        if (memoized(v)) return;
        save_global("__builtin__", "set");
        op(EMPTY_LIST);
        put_memo();
        save_list_items(v.as_set(), depth);
        close_tuple(1);
        remember(v);
        return reduce();
      }
      case Value::Kind::Dict: {
        if (memoized(v)) return;
        const Dict& d = v.as_dict();
        if (!d.ordered) {
          op(EMPTY_DICT);
          remember(v);
          put_memo();
          return save_dict_items(d, depth);
        }
        // OrderedDict.__reduce__: (OrderedDict, (), self.__dict__ or None, None, iter(items))
        save_global("collections", "OrderedDict");
        op(EMPTY_TUPLE);
        op(REDUCE);
        remember(v);
        put_memo();
        save_dict_items_iter(d, depth);
        if (d.attributes.is_dict() && !d.attributes.as_dict().empty()) {
          save(d.attributes, depth + 1);
          op(BUILD);
        }
        return;
      }
      case Value::Kind::Tensor: return save_tensor(v.as_tensor());
      case Value::Kind::Storage: {
        const StorageValue& s = v.as_storage();
        return save_persistent_storage(s.storage, s.dtype, s.device);
      }
      case Value::Kind::DType: return save_global("torch", name(v.as_dtype()));
      case Value::Kind::Device: return save_device(v.as_device().name);
      case Value::Kind::Size: {
        // torch.Size.__reduce__: (torch.Size, (tuple(self),))
        save_global("torch", "Size");
        save_int_tuple(v.as_size().dims);
        close_tuple(1);
        return reduce();
      }
      case Value::Kind::Global:
        if (write_objects) return save_global(v.as_global().module, v.as_global().name);
        throw Error("cannot save inert global '" + v.as_global().qualified() +
                    "': ckpt writes only what torch.load(weights_only=True) reads");
      case Value::Kind::Object:
        if (auto sparse = as_sparse(v)) {  // as torch writes it: _rebuild_sparse_tensor(_get_layout(name), data)
          const Object& o = v.as_object();
          save_global(o.module, o.name);
          save_global("torch.serialization", "_get_layout");
          save_str("torch." + sparse->layout);
          close_tuple(1);
          reduce();
          save(o.args.as_tuple()[1], depth + 1);
          close_tuple(2);
          reduce();
          return;
        }
        if (write_objects) return save_object(v, depth);
        throw Error("cannot save inert object '" + v.as_object().qualified() +
                    "': ckpt writes only what torch.load(weights_only=True) reads");
    }
  }
};

std::string TorchPickler::dump(const Value& value) {
  storages_.clear();
  Impl impl(storages_, write_objects_);
  impl.op(PROTO);
  impl.u8(2);
  impl.save(value, 1);  // depth: containers from the root to here, both included
  impl.op(STOP);
  return std::move(impl.out);
}

}  // namespace ckpt::pickle
