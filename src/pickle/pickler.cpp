#include "pickle/pickler.hpp"

#include <cstring>
#include <unordered_map>

#include "ckpt/error.hpp"

namespace ckpt::pickle {

namespace {
constexpr size_t kBatchSize = 1000;  // CPython pickle.py: BATCHSIZE
constexpr int kMaxDepth = 10000;     // refuse absurdly deep trees instead of overflowing the stack
}  // namespace

struct TorchPickler::Impl {
  std::string out;
  std::vector<StorageRecord>& storages;
  uint32_t next_memo = 0;
  std::unordered_map<const void*, uint32_t> memo_obj;     // containers by identity
  std::unordered_map<std::string, uint32_t> memo_str;     // strings by value
  std::unordered_map<std::string, uint32_t> memo_global;  // "module\nname"
  std::unordered_map<const void*, size_t> storage_index;  // Storage::id() -> storages index

  explicit Impl(std::vector<StorageRecord>& s) : storages(s) {}

  // ---- raw opcodes
  void op(char c) { out.push_back(c); }
  void u8(uint8_t v) { out.push_back(static_cast<char>(v)); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void put_memo() {
    uint32_t i = next_memo++;
    if (i < 256) {
      op('q');
      u8(static_cast<uint8_t>(i));
    } else {
      op('r');
      u32(i);
    }
  }
  void get_memo(uint32_t i) {
    if (i < 256) {
      op('h');
      u8(static_cast<uint8_t>(i));
    } else {
      op('j');
      u32(i);
    }
  }

  // ---- scalars
  void save_int(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      u8(static_cast<uint8_t>(v));
    } else if (v >= 0 && v < 65536) {
      op('M');
      u8(static_cast<uint8_t>(v & 0xff));
      u8(static_cast<uint8_t>(v >> 8));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {
      // LONG1: minimal two's complement, little-endian.
      std::string b;
      uint64_t u = static_cast<uint64_t>(v);
      for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
      while (b.size() > 1) {
        auto last = static_cast<uint8_t>(b.back()), prev = static_cast<uint8_t>(b[b.size() - 2]);
        if ((last == 0 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80))) b.pop_back();
        else break;
      }
      op('\x8a');
      u8(static_cast<uint8_t>(b.size()));
      out += b;
    }
  }
  void save_bigint(const BigInt& b) {
    if (b.bytes.size() < 256) {
      op('\x8a');
      u8(static_cast<uint8_t>(b.bytes.size()));
    } else {
      op('\x8b');
      u32(static_cast<uint32_t>(b.bytes.size()));
    }
    out.append(reinterpret_cast<const char*>(b.bytes.data()), b.bytes.size());
  }
  void save_float(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    op('G');
    for (int i = 7; i >= 0; --i) u8(static_cast<uint8_t>((bits >> (8 * i)) & 0xff));  // big-endian
  }
  void save_str(const std::string& s) {
    auto it = memo_str.find(s);
    if (it != memo_str.end()) return get_memo(it->second);
    if (s.size() > UINT32_MAX) throw Error("string of " + std::to_string(s.size()) + " bytes is too long to pickle");
    op('X');
    u32(static_cast<uint32_t>(s.size()));
    out += s;
    memo_str.emplace(s, next_memo);
    put_memo();
  }
  void save_global(const std::string& module, const std::string& name) {
    std::string key = module + "\n" + name;
    auto it = memo_global.find(key);
    if (it != memo_global.end()) return get_memo(it->second);
    op('c');
    out += key;
    op('\n');
    memo_global.emplace(std::move(key), next_memo);
    put_memo();
  }
  // After the elements of a tuple of `n` items are on the stack.
  void close_tuple(size_t n) {
    if (n == 1) op('\x85');
    else if (n == 2) op('\x86');
    else if (n == 3) op('\x87');
    else op('t');
    put_memo();
  }
  void open_tuple(size_t n) {
    if (n > 3) op('(');
  }
  void reduce() {
    op('R');
    put_memo();
  }
  void empty_ordered_dict() {  // OrderedDict()
    save_global("collections", "OrderedDict");
    op(')');
    reduce();
  }

  // ---- containers
  void save_list_items(const List& items, int depth) {
    for (size_t i = 0; i < items.size(); i += kBatchSize) {
      size_t n = std::min(kBatchSize, items.size() - i);
      if (n > 1) op('(');
      for (size_t k = 0; k < n; ++k) save(items[i + k], depth + 1);
      op(n > 1 ? 'e' : 'a');
    }
  }
  void save_dict_items(const Dict& d, int depth) {
    const auto& items = d.items();
    for (size_t i = 0; i < items.size(); i += kBatchSize) {
      size_t n = std::min(kBatchSize, items.size() - i);
      if (n > 1) op('(');
      for (size_t k = 0; k < n; ++k) {
        save(items[i + k].first, depth + 1);
        save(items[i + k].second, depth + 1);
      }
      op(n > 1 ? 'u' : 's');
    }
  }
  bool memoized(const Value& v) {
    auto it = memo_obj.find(v.container_id());
    if (it == memo_obj.end()) return false;
    get_memo(it->second);
    return true;
  }
  void remember(const Value& v) { memo_obj.emplace(v.container_id(), next_memo); }

  // ---- torch objects
  const StorageRecord& storage_record(const Storage& s, DType dtype) {
    auto it = storage_index.find(s.id());
    if (it != storage_index.end()) {
      const StorageRecord& r = storages[it->second];
      if (r.dtype != dtype)
        throw Error("cannot save tensors that view one storage as different types (" + std::string(name(r.dtype)) +
                    " and " + std::string(name(dtype)) + "); torch.save refuses this too");
      return r;
    }
    storage_index.emplace(s.id(), storages.size());
    storages.push_back({std::to_string(storages.size()), s, dtype});
    return storages.back();
  }

  // ('storage', <class>, key, location, numel) BINPERSID
  void save_persistent_storage(const Storage& s, DType dtype, const std::string& device) {
    const StorageRecord& r = storage_record(s, dtype);
    const bool typed = !info(dtype).storage_name.empty();
    const size_t esize = typed ? itemsize(dtype) : 1;
    if (s.nbytes() % esize != 0)
      throw Error("storage of " + std::to_string(s.nbytes()) + " bytes is not a whole number of " +
                  std::string(name(dtype)) + " elements");
    op('(');
    save_str("storage");
    if (typed) save_global("torch", std::string(info(dtype).storage_name));
    else save_global("torch.storage", "UntypedStorage");
    save_str(r.key);
    save_str(device);
    save_int(static_cast<int64_t>(s.nbytes() / esize));
    close_tuple(5);
    op('Q');
  }

  void save_int_tuple(const std::vector<int64_t>& v) {
    if (v.empty()) {
      op(')');
      return;
    }
    open_tuple(v.size());
    for (int64_t x : v) save_int(x);
    close_tuple(v.size());
  }

  void save_tensor_data(const Tensor& t, bool requires_grad) {
    if (!t.defined()) throw Error("cannot save an undefined tensor");
    const bool typed = !info(t.dtype()).storage_name.empty();
    save_global("torch._utils", typed ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3");
    op('(');
    save_persistent_storage(t.storage(), t.dtype(), t.device());
    save_int(t.storage_offset());
    save_int_tuple(t.sizes());
    save_int_tuple(t.strides());
    op(requires_grad ? '\x88' : '\x89');
    empty_ordered_dict();
    if (!typed) save_global("torch", std::string(name(t.dtype())));
    close_tuple(typed ? 6 : 7);
    reduce();
  }

  void save_tensor(const Tensor& t) {
    if (!t.is_parameter()) return save_tensor_data(t, t.requires_grad());
    // Parameter.__reduce_ex__: _rebuild_parameter(data, requires_grad, OrderedDict())
    save_global("torch._utils", "_rebuild_parameter");
    save_tensor_data(t, false);
    op(t.requires_grad() ? '\x88' : '\x89');
    empty_ordered_dict();
    close_tuple(3);
    reduce();
  }

  // ---- dispatch
  void save(const Value& v, int depth) {
    if (depth > kMaxDepth) throw Error("value nests deeper than " + std::to_string(kMaxDepth) + " levels");
    switch (v.kind()) {
      case Value::Kind::None: op('N'); return;
      case Value::Kind::Bool: op(v.as_bool() ? '\x88' : '\x89'); return;
      case Value::Kind::Int: save_int(v.as_int()); return;
      case Value::Kind::BigInt: save_bigint(v.as_bigint()); return;
      case Value::Kind::Float: save_float(v.as_float()); return;
      case Value::Kind::String: save_str(v.as_string()); return;
      case Value::Kind::Bytes: {
        // bytearray(b) pickles as bytearray(<the bytes below>), bytearray() as bytearray().
        const bool array = v.is_bytearray();
        if (array) {
          save_global("__builtin__", "bytearray");
          if (v.as_bytes().empty()) {
            op(')');
            reduce();
            return;
          }
        }
        // Protocol 2 has no bytes opcode: _codecs.encode(latin-1 text, 'latin1').
        // (CPython writes b'' as builtins.bytes(), which torch's weights-only
        // loader refuses; the encode form loads everywhere.)
        save_global("_codecs", "encode");
        std::string text;
        for (unsigned char c : v.as_bytes()) {
          if (c < 0x80) {
            text += static_cast<char>(c);
          } else {
            text += static_cast<char>(0xC0 | (c >> 6));
            text += static_cast<char>(0x80 | (c & 0x3F));
          }
        }
        // A fresh str object in Python: never memo-shared with an equal str.
        op('X');
        u32(static_cast<uint32_t>(text.size()));
        out += text;
        put_memo();
        save_str("latin1");
        close_tuple(2);
        reduce();
        if (array) {
          close_tuple(1);
          reduce();
        }
        return;
      }
      case Value::Kind::Complex: {
        save_global("__builtin__", "complex");
        save_float(v.as_complex().real());
        save_float(v.as_complex().imag());
        close_tuple(2);
        reduce();
        return;
      }
      case Value::Kind::List: {
        if (memoized(v)) return;
        op(']');
        remember(v);
        put_memo();
        save_list_items(v.as_list(), depth);
        return;
      }
      case Value::Kind::Tuple: {
        if (memoized(v)) return;
        const List& items = v.as_tuple();
        if (items.empty()) {
          op(')');
          return;
        }
        open_tuple(items.size());
        for (const auto& x : items) save(x, depth + 1);
        if (memoized(v)) return;  // (recursive tuples cannot occur in ckpt's trees)
        remember(v);
        close_tuple(items.size());
        return;
      }
      case Value::Kind::Set: {
        if (memoized(v)) return;
        save_global("__builtin__", "set");
        op(']');
        put_memo();
        save_list_items(v.as_set(), depth);
        close_tuple(1);
        remember(v);
        reduce();
        return;
      }
      case Value::Kind::Dict: {
        if (memoized(v)) return;
        const Dict& d = v.as_dict();
        if (d.ordered) {
          save_global("collections", "OrderedDict");
          op(')');
          op('R');
          remember(v);
          put_memo();
          save_dict_items(d, depth);
          if (d.attributes.is_dict() && !d.attributes.as_dict().empty()) {
            save(d.attributes, depth + 1);
            op('b');
          }
          return;
        }
        op('}');
        remember(v);
        put_memo();
        save_dict_items(d, depth);
        return;
      }
      case Value::Kind::Tensor: save_tensor(v.as_tensor()); return;
      case Value::Kind::Storage: {
        const StorageValue& s = v.as_storage();
        save_persistent_storage(s.storage, s.dtype, s.device);
        return;
      }
      case Value::Kind::DType: save_global("torch", std::string(name(v.as_dtype()))); return;
      case Value::Kind::Device: {
        // torch.device('cuda', 0) / torch.device('cpu')
        const std::string& n = v.as_device().name;
        save_global("torch", "device");
        size_t colon = n.find(':');
        if (colon == std::string::npos) {
          save_str(n);
          close_tuple(1);
        } else {
          save_str(n.substr(0, colon));
          save_int(std::stoll(n.substr(colon + 1)));
          close_tuple(2);
        }
        reduce();
        return;
      }
      case Value::Kind::Size: {
        save_global("torch", "Size");
        save_int_tuple(v.as_size().dims);
        close_tuple(1);
        reduce();
        return;
      }
      case Value::Kind::Global:
        throw Error("cannot save the inert global '" + v.as_global().qualified() +
                    "': ckpt writes only what torch.load(weights_only=True) reads");
      case Value::Kind::Object:
        throw Error("cannot save the inert object '" + v.as_object().qualified() +
                    "': ckpt writes only what torch.load(weights_only=True) reads");
    }
  }
};

std::string TorchPickler::dump(const Value& value) {
  storages_.clear();
  Impl impl(storages_);
  impl.out = "\x80\x02";
  impl.save(value, 0);
  impl.op('.');
  return std::move(impl.out);
}

}  // namespace ckpt::pickle
