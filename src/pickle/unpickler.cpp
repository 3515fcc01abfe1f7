#include "pickle/unpickler.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "ckpt/error.hpp"
#include "core/checked.hpp"
#include "pickle/torch_globals.hpp"

namespace ckpt::pickle {
namespace {

// ---------------------------------------------------------------- opcodes

enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I', BININT = 'J',
  BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R',
  STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h',
  INST = 'i', LONG_BINGET = 'j', LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q',
  LONG_BINPUT = 'r', SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85, TUPLE2 = 0x86,
  TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b, BINBYTES = 'B',
  SHORT_BINBYTES = 'C', SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f,
  ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

constexpr size_t kMaxLineLength = 1 << 16;  // text-opcode arguments (GLOBAL names, INT literals)

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

// Python 2 module names that pickles written by Python 2 use (pickle's _compat_pickle).
void map_py2_names(std::string& module, std::string& name) {
  if (module == "__builtin__") {
    module = "builtins";
    if (name == "unicode") name = "str";
    else if (name == "long") name = "int";
    else if (name == "xrange") name = "range";
  } else if (module == "copy_reg") {
    module = "copyreg";
  } else if (module == "torch.tensor") {
    module = "torch._tensor";
  }
}

// ---------------------------------------------------------------- the machine

class Machine {
 public:
  Machine(std::span<const std::byte> data, const Options& opts) : data_(data), opts_(opts) {}

  Value run(size_t* consumed) {
    try {
      Value v = loop();
      if (consumed) *consumed = pos_;
      check_result(v);
      return v;
    } catch (Error& e) {
      e.add_context(ErrorContext{opts_.file, opts_.record, op_offset_});
      dismantle();
      throw;
    } catch (...) {
      dismantle();
      throw;
    }
  }

 private:
  std::span<const std::byte> data_;
  const Options& opts_;
  size_t pos_ = 0;
  uint64_t op_offset_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;  // stack heights at each MARK
  std::unordered_map<uint64_t, Value> memo_;
  std::vector<Value> arena_;  // every container created, to dismantle without recursion

  // ---- errors
  [[noreturn]] void fail(const std::string& msg) const {
    throw FormatError(msg, ErrorContext{opts_.file, opts_.record, op_offset_});
  }

  // ---- reading
  size_t remaining() const { return data_.size() - pos_; }
  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      throw FormatError(std::string("pickle is truncated: ") + what + " needs " + std::to_string(n) +
                            " bytes, " + std::to_string(remaining()) + " remain",
                        ErrorContext{opts_.file, opts_.record, op_offset_});
  }
  uint8_t u8() {
    need(1, "opcode argument");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t uint_le(size_t n) {
    need(n, "integer argument");
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }
  std::string_view take(uint64_t n, const char* what) {
    if (n > opts_.limits.max_string)
      throw LimitError(std::string(what) + " of " + std::to_string(n) + " bytes passes the limit of " +
                           std::to_string(opts_.limits.max_string),
                       ErrorContext{opts_.file, opts_.record, op_offset_});
    need(n, what);
    std::string_view s(reinterpret_cast<const char*>(data_.data() + pos_), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  std::string_view line() {
    const char* begin = reinterpret_cast<const char*>(data_.data() + pos_);
    size_t max = std::min(remaining(), kMaxLineLength);
    const void* nl = std::memchr(begin, '\n', max);
    if (nl == nullptr) fail(remaining() > kMaxLineLength ? "text argument is too long" : "pickle is truncated inside a text argument");
    size_t n = static_cast<size_t>(static_cast<const char*>(nl) - begin);
    pos_ += n + 1;
    std::string_view s(begin, n);
    if (!s.empty() && s.back() == '\r') s.remove_suffix(1);
    return s;
  }

  // ---- stack
  void push(Value v) {
    if (stack_.size() + marks_.size() >= opts_.limits.max_stack)
      throw LimitError("pickle stack passes " + std::to_string(opts_.limits.max_stack) + " entries",
                       ErrorContext{opts_.file, opts_.record, op_offset_});
    stack_.push_back(std::move(v));
  }
  Value pop() {
    if (stack_.size() <= base()) fail("stack underflow");
    Value v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  Value& top() {
    if (stack_.size() <= base()) fail("stack underflow");
    return stack_.back();
  }
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  // Pops everything above the last MARK, and the mark.
  List pop_mark() {
    if (marks_.empty()) fail("MARK expected but none is open");
    size_t m = marks_.back();
    marks_.pop_back();
    List items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
               std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  Value track(Value v) {
    if (v.container_id() != nullptr) arena_.push_back(v);
    return v;
  }

  // ---- memo
  void memo_put(uint64_t index) {
    if (stack_.size() <= base()) fail("memo store with an empty stack");
    if (memo_.size() >= opts_.limits.max_memo && !memo_.count(index))
      throw LimitError("pickle memo passes " + std::to_string(opts_.limits.max_memo) + " entries",
                       ErrorContext{opts_.file, opts_.record, op_offset_});
    memo_[index] = stack_.back();
  }
  void memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo entry " + std::to_string(index) + " is read before it is stored");
    push(it->second);
  }
  uint64_t decimal(std::string_view s, const char* what) {
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size()) fail(std::string("malformed ") + what + " '" + std::string(s) + "'");
    return v;
  }

  // ---- events
  void event(Event::Kind kind, const std::string& module, const std::string& name) {
    if (opts_.observer == nullptr) return;
    opts_.observer->on_event(Event{kind, module, name, op_offset_, is_allowed_global(module, name)});
  }
  void call_event(Event::Kind kind, const Value& callable) {
    if (opts_.observer == nullptr) return;
    if (callable.kind() == Value::Kind::Global) {
      event(kind, callable.as_global().module, callable.as_global().name);
    } else if (callable.kind() == Value::Kind::DType) {
      event(kind, "torch", std::string(name(callable.as_dtype())));
    } else {
      event(kind, "", std::string(callable.kind_name()));
    }
  }

  // ---- globals
  Value resolve_global(std::string module, std::string name) {
    map_py2_names(module, name);
    event(Event::Kind::global, module, name);
    if (is_allowed_global(module, name)) {
      if (module == "torch") {
        if (auto d = dtype_from_name(name); d && name.find("Storage") == std::string::npos) return Value(*d);
      }
      return Value(Global{module, name});
    }
    if (opts_.accept_inert && opts_.accept_inert(module, name) && !is_blocked_module(module))
      return Value(Global{module, name});
    if (opts_.policy == GlobalPolicy::inspect) return Value(Global{module, name});
    std::string why = is_blocked_module(module) ? " (module '" + module + "' is blocked)" : "";
    throw UnsafeError("global '" + module + "." + name + "' is not allowed when loading weights" + why +
                          "; nothing was executed (use 'ckpt scan' to inspect the file, or load with "
                          "weights_only=false / --objects to see it as an inert object)",
                      ErrorContext{opts_.file, opts_.record, op_offset_});
  }

  // An inert object: only for Globals that are not allow-listed functions.
  Value make_object(const Value& callable, const char* how, Value args, Value kwargs) {
    auto o = std::make_shared<Object>();
    o->module = callable.as_global().module;
    o->name = callable.as_global().name;
    o->how = how;
    o->args = std::move(args);
    o->kwargs = std::move(kwargs);
    return track(Value(std::move(o)));
  }

  bool is_inert_global(const Value& callable) const {
    if (callable.kind() != Value::Kind::Global) return false;
    const Global& g = callable.as_global();
    return !is_allowed_global(g.module, g.name);
  }

  Value call(const Value& callable, Value args, const char* how, Event::Kind kind) {
    call_event(kind, callable);
    if (!args.is_tuple()) fail(std::string(how) + " arguments are a " + std::string(args.kind_name()) + ", not a tuple");
    if (is_inert_global(callable)) return make_object(callable, how, std::move(args), Value());
    if (callable.kind() != Value::Kind::Global)
      throw UnsafeError(std::string(how) + " on a " + std::string(callable.kind_name()) +
                            " value is not allowed: only allow-listed functions can be called",
                        ErrorContext{opts_.file, opts_.record, op_offset_});
    try {
      Value r = call_torch_global(callable.as_global(), args.as_tuple(), opts_.limits);
      return track(std::move(r));
    } catch (Error& e) {
      e.add_context(ErrorContext{opts_.file, opts_.record, op_offset_});
      throw;
    }
  }

  void build(Value& obj, Value state) {
    switch (obj.kind()) {
      case Value::Kind::Object: {
        event(Event::Kind::build, obj.as_object().module, obj.as_object().name);
        obj.as_object().state = std::move(state);
        return;
      }
      case Value::Kind::Dict: {
        event(Event::Kind::build, "collections", obj.as_dict().ordered ? "OrderedDict" : "dict");
        // OrderedDict.__dict__ update (a state dict's _metadata); (dict, slots) allowed.
        Value attrs = state;
        if (state.is_tuple() && state.as_tuple().size() == 2) attrs = state.as_tuple()[0];
        if (attrs.is_none()) return;
        if (!attrs.is_dict()) fail("BUILD state for a dict is a " + std::string(attrs.kind_name()));
        Dict& d = obj.as_dict();
        if (d.attributes.is_none()) d.attributes = track(Value::dict());
        for (const auto& [k, v] : attrs.as_dict()) d.attributes.as_dict().set(k, v);
        return;
      }
      case Value::Kind::Tensor: {
        // torch: Tensor.__setstate__ / Parameter with extra state; the state
        // carries Python attributes ckpt does not model. Accept and ignore.
        event(Event::Kind::build, "torch", "Tensor");
        return;
      }
      default:
        throw UnsafeError("BUILD on a " + std::string(obj.kind_name()) + " is not allowed",
                          ErrorContext{opts_.file, opts_.record, op_offset_});
    }
  }

  void append_items(Value& target, List items) {
    if (target.is_list()) {
      auto& l = target.as_list();
      l.insert(l.end(), std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
    } else if (target.kind() == Value::Kind::Set) {
      auto& s = target.as_set();
      s.insert(s.end(), std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
    } else if (target.is_object() && opts_.policy == GlobalPolicy::inspect) {
      auto& l = target.as_object().list_items;
      l.insert(l.end(), std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
    } else {
      fail("APPEND onto a " + std::string(target.kind_name()) + ", which is not a list");
    }
  }

  void set_items(Value& target, List kv) {
    if (kv.size() % 2 != 0) fail("SETITEMS with an odd number of values");
    if (target.is_dict()) {
      Dict& d = target.as_dict();
      for (size_t i = 0; i < kv.size(); i += 2) {
        if (!kv[i].hashable()) fail("dict key of type " + std::string(kv[i].kind_name()) + " is unhashable");
        d.set(std::move(kv[i]), std::move(kv[i + 1]));
      }
    } else if (target.is_object() && opts_.policy == GlobalPolicy::inspect) {
      auto& items = target.as_object().dict_items;
      for (size_t i = 0; i < kv.size(); i += 2) items.emplace_back(std::move(kv[i]), std::move(kv[i + 1]));
    } else {
      fail("SETITEM onto a " + std::string(target.kind_name()) + ", which is not a dict");
    }
  }

  Value make_int_from_le(std::string_view bytes) {
    if (bytes.empty()) return Value(int64_t{0});
    if (bytes.size() <= 8) {
      uint64_t v = 0;
      for (size_t i = 0; i < bytes.size(); ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
      if (bytes.size() < 8 && (static_cast<uint8_t>(bytes.back()) & 0x80))
        v |= ~uint64_t{0} << (8 * bytes.size());  // sign-extend
      return Value(static_cast<int64_t>(v));
    }
    // Minimal form: drop redundant sign bytes, then it may fit after all.
    std::vector<uint8_t> b(bytes.begin(), bytes.end());
    while (b.size() > 1) {
      uint8_t last = b.back(), prev = b[b.size() - 2];
      if ((last == 0 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80))) b.pop_back();
      else break;
    }
    if (b.size() <= 8)
      return make_int_from_le(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
    return Value(BigInt{std::move(b)});
  }

  Value parse_decimal_int(std::string_view s) {
    if (!s.empty() && (s.back() == 'L')) s.remove_suffix(1);
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec == std::errc() && p == s.data() + s.size()) return Value(v);
    if (ec == std::errc::result_out_of_range) {
      // Big decimal: convert to two's complement little-endian.
      bool neg = !s.empty() && s[0] == '-';
      std::string_view digits = neg || (!s.empty() && s[0] == '+') ? s.substr(1) : s;
      std::vector<uint8_t> mag{0};
      for (char c : digits) {
        if (c < '0' || c > '9') fail("malformed integer '" + std::string(s) + "'");
        unsigned carry = static_cast<unsigned>(c - '0');
        for (auto& b : mag) {
          unsigned cur = b * 10u + carry;
          b = static_cast<uint8_t>(cur);
          carry = cur >> 8;
        }
        if (carry) mag.push_back(static_cast<uint8_t>(carry));
      }
      mag.push_back(0);  // room for the sign bit
      if (neg) {
        unsigned carry = 1;
        for (auto& b : mag) {
          unsigned cur = static_cast<uint8_t>(~b) + carry;
          b = static_cast<uint8_t>(cur);
          carry = cur >> 8;
        }
      }
      return make_int_from_le(std::string_view(reinterpret_cast<const char*>(mag.data()), mag.size()));
    }
    fail("malformed integer '" + std::string(s) + "'");
  }

  double parse_float_line(std::string_view s) {
    std::string str(s);
    if (str == "nan" || str == "inf" || str == "-inf") return str == "nan" ? NAN : str == "inf" ? INFINITY : -INFINITY;
    char* end = nullptr;
    double d = std::strtod(str.c_str(), &end);
    if (str.empty() || end != str.c_str() + str.size()) fail("malformed float '" + str + "'");
    return d;
  }

  // Python-2 STRING literal: a quoted repr with backslash escapes.
  std::string parse_string_literal(std::string_view s) {
    if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front())
      fail("malformed STRING argument");
    s = s.substr(1, s.size() - 2);
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\' || i + 1 == s.size()) {
        out += s[i];
        continue;
      }
      char c = s[++i];
      switch (c) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'x': {
          if (i + 2 >= s.size() + 0 && i + 2 > s.size()) fail("malformed \\x escape");
          if (i + 2 >= s.size() + 1) fail("malformed \\x escape");
          unsigned v = 0;
          auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
          if (ec != std::errc() || p != s.data() + i + 3) fail("malformed \\x escape");
          out += static_cast<char>(v);
          i += 2;
          break;
        }
        default: out += '\\'; out += c;
      }
    }
    return out;
  }

  // raw-unicode-escape (UNICODE opcode): \uXXXX and \UXXXXXXXX escapes.
  std::string parse_raw_unicode(std::string_view s) {
    std::string out;
    auto put_cp = [&](uint32_t cp) {
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid code point in UNICODE argument");
      if (cp < 0x80) out += static_cast<char>(cp);
      else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
      else if (cp < 0x10000) { out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
      else { out += static_cast<char>(0xF0 | (cp >> 18)); out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
    };
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
        size_t n = s[i + 1] == 'u' ? 4 : 8;
        if (i + 2 + n > s.size()) fail("malformed \\u escape in UNICODE argument");
        uint32_t cp = 0;
        auto [p, ec] = std::from_chars(s.data() + i + 2, s.data() + i + 2 + n, cp, 16);
        if (ec != std::errc() || p != s.data() + i + 2 + n) fail("malformed \\u escape in UNICODE argument");
        put_cp(cp);
        i += 1 + n;
      } else {
        put_cp(static_cast<unsigned char>(s[i]));  // latin-1 byte
      }
    }
    return out;
  }

  Value py2_string(std::string_view s) {
    if (valid_utf8(s)) return Value(std::string(s));
    return Value::bytes(std::string(s));
  }

  Value unicode(std::string_view s) {
    if (!valid_utf8(s)) fail("string is not valid UTF-8");
    return Value(std::string(s));
  }

  // ---- the loop
  Value loop() {
    while (true) {
      op_offset_ = pos_;
      if (pos_ >= data_.size()) fail("pickle is truncated: no STOP opcode");
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      switch (op) {
        case PROTO: {
          uint8_t v = u8();
          if (v > 5) fail("unsupported pickle protocol " + std::to_string(v));
          break;
        }
        case FRAME: {
          uint64_t n = uint_le(8);
          need(n, "FRAME");
          break;
        }
        case STOP: {
          if (!marks_.empty()) fail("STOP with an open MARK");
          if (stack_.size() != 1) fail("STOP with " + std::to_string(stack_.size()) + " values on the stack, expected 1");
          return pop();
        }
        case MARK:
          if (stack_.size() + marks_.size() >= opts_.limits.max_stack)
            throw LimitError("pickle stack passes its limit", ErrorContext{opts_.file, opts_.record, op_offset_});
          marks_.push_back(stack_.size());
          break;
        case POP:
          if (stack_.size() > base()) stack_.pop_back();
          else if (!marks_.empty()) marks_.pop_back();  // POP of a mark (as CPython allows)
          else fail("stack underflow");
          break;
        case POP_MARK: (void)pop_mark(); break;
        case DUP: push(top()); break;
        case NONE: push(Value()); break;
        case NEWTRUE: push(Value(true)); break;
        case NEWFALSE: push(Value(false)); break;
        case INT: {
          std::string_view s = line();
          if (s == "01") push(Value(true));
          else if (s == "00") push(Value(false));
          else push(parse_decimal_int(s));
          break;
        }
        case BININT: push(Value(static_cast<int64_t>(static_cast<int32_t>(uint_le(4))))); break;
        case BININT1: push(Value(static_cast<int64_t>(u8()))); break;
        case BININT2: push(Value(static_cast<int64_t>(uint_le(2)))); break;
        case LONG: push(parse_decimal_int(line())); break;
        case LONG1: {
          uint8_t n = u8();
          push(make_int_from_le(take(n, "LONG1")));
          break;
        }
        case LONG4: {
          int32_t n = static_cast<int32_t>(uint_le(4));
          if (n < 0) fail("LONG4 with a negative length");
          push(make_int_from_le(take(static_cast<uint64_t>(n), "LONG4")));
          break;
        }
        case FLOAT: push(Value(parse_float_line(line()))); break;
        case BINFLOAT: {
          need(8, "BINFLOAT");
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(data_[pos_ + i]);  // big-endian
          pos_ += 8;
          double d;
          std::memcpy(&d, &bits, 8);
          push(Value(d));
          break;
        }
        case STRING: push(py2_string(parse_string_literal(line()))); break;
        case BINSTRING: {
          int32_t n = static_cast<int32_t>(uint_le(4));
          if (n < 0) fail("BINSTRING with a negative length");
          push(py2_string(take(static_cast<uint64_t>(n), "BINSTRING")));
          break;
        }
        case SHORT_BINSTRING: push(py2_string(take(u8(), "SHORT_BINSTRING"))); break;
        case UNICODE: push(Value(parse_raw_unicode(line()))); break;
        case BINUNICODE: push(unicode(take(uint_le(4), "BINUNICODE"))); break;
        case SHORT_BINUNICODE: push(unicode(take(u8(), "SHORT_BINUNICODE"))); break;
        case BINUNICODE8: push(unicode(take(uint_le(8), "BINUNICODE8"))); break;
        case BINBYTES: push(Value::bytes(std::string(take(uint_le(4), "BINBYTES")))); break;
        case SHORT_BINBYTES: push(Value::bytes(std::string(take(u8(), "SHORT_BINBYTES")))); break;
        case BINBYTES8: push(Value::bytes(std::string(take(uint_le(8), "BINBYTES8")))); break;
        case BYTEARRAY8: push(Value::bytearray(std::string(take(uint_le(8), "BYTEARRAY8")))); break;
        case NEXT_BUFFER:
        case READONLY_BUFFER:
          throw UnsupportedError("out-of-band pickle buffers (protocol 5) are not supported",
                                 ErrorContext{opts_.file, opts_.record, op_offset_});
        case EMPTY_LIST: push(track(Value::list())); break;
        case EMPTY_TUPLE: push(track(Value::tuple())); break;
        case EMPTY_DICT: push(track(Value::dict())); break;
        case EMPTY_SET: push(track(Value::set())); break;
        case LIST: push(track(Value::list(pop_mark()))); break;
        case TUPLE: push(track(Value::tuple(pop_mark()))); break;
        case FROZENSET: push(track(Value::set(pop_mark()))); break;
        case TUPLE1: {
          Value a = pop();
          push(track(Value::tuple({std::move(a)})));
          break;
        }
        case TUPLE2: {
          Value b = pop(), a = pop();
          push(track(Value::tuple({std::move(a), std::move(b)})));
          break;
        }
        case TUPLE3: {
          Value c = pop(), b = pop(), a = pop();
          push(track(Value::tuple({std::move(a), std::move(b), std::move(c)})));
          break;
        }
        case DICT: {
          List kv = pop_mark();
          Value d = track(Value::dict());
          set_items(d, std::move(kv));
          push(std::move(d));
          break;
        }
        case APPEND: {
          Value v = pop();
          append_items(top(), List{std::move(v)});
          break;
        }
        case APPENDS: {
          List items = pop_mark();
          append_items(top(), std::move(items));
          break;
        }
        case ADDITEMS: {
          List items = pop_mark();
          if (top().kind() != Value::Kind::Set) fail("ADDITEMS onto a " + std::string(top().kind_name()));
          append_items(top(), std::move(items));
          break;
        }
        case SETITEM: {
          Value v = pop(), k = pop();
          set_items(top(), List{std::move(k), std::move(v)});
          break;
        }
        case SETITEMS: {
          List kv = pop_mark();
          set_items(top(), std::move(kv));
          break;
        }
        case PUT: memo_put(decimal(line(), "PUT index")); break;
        case BINPUT: memo_put(u8()); break;
        case LONG_BINPUT: memo_put(uint_le(4)); break;
        case MEMOIZE: memo_put(memo_.size()); break;
        case GET: memo_get(decimal(line(), "GET index")); break;
        case BINGET: memo_get(u8()); break;
        case LONG_BINGET: memo_get(uint_le(4)); break;
        case GLOBAL: {
          std::string module(line());
          std::string name(line());
          push(resolve_global(std::move(module), std::move(name)));
          break;
        }
        case STACK_GLOBAL: {
          Value name = pop(), module = pop();
          if (!module.is_string() || !name.is_string()) fail("STACK_GLOBAL needs two strings");
          push(resolve_global(module.as_string(), name.as_string()));
          break;
        }
        case INST: {
          std::string module(line());
          std::string name(line());
          Value cls = resolve_global(std::move(module), std::move(name));
          Value args = track(Value::tuple(pop_mark()));
          push(call(cls, std::move(args), "INST", Event::Kind::inst));
          break;
        }
        case OBJ: {
          List items = pop_mark();
          if (items.empty()) fail("OBJ without a class");
          Value cls = std::move(items.front());
          items.erase(items.begin());
          push(call(cls, track(Value::tuple(std::move(items))), "OBJ", Event::Kind::obj));
          break;
        }
        case REDUCE: {
          Value args = pop(), fn = pop();
          push(call(fn, std::move(args), "REDUCE", Event::Kind::reduce));
          break;
        }
        case NEWOBJ: {
          Value args = pop(), cls = pop();
          push(call(cls, std::move(args), "NEWOBJ", Event::Kind::newobj));
          break;
        }
        case NEWOBJ_EX: {
          Value kwargs = pop(), args = pop(), cls = pop();
          if (!kwargs.is_dict()) fail("NEWOBJ_EX keyword arguments are not a dict");
          call_event(Event::Kind::newobj_ex, cls);
          if (!is_inert_global(cls))
            throw UnsafeError("NEWOBJ_EX is not allowed on this class", ErrorContext{opts_.file, opts_.record, op_offset_});
          if (!args.is_tuple()) fail("NEWOBJ_EX arguments are not a tuple");
          push(make_object(cls, "NEWOBJ_EX", std::move(args), std::move(kwargs)));
          break;
        }
        case BUILD: {
          Value state = pop();
          build(top(), std::move(state));
          break;
        }
        case PERSID: {
          std::string id(line());
          push(persistent(Value(std::move(id))));
          break;
        }
        case BINPERSID: {
          Value pid = pop();
          push(persistent(pid));
          break;
        }
        case EXT1:
        case EXT2:
        case EXT4: {
          uint64_t code = op == EXT1 ? u8() : op == EXT2 ? uint_le(2) : uint_le(4);
          event(Event::Kind::ext, "copyreg.ext", std::to_string(code));
          if (opts_.policy == GlobalPolicy::weights_only)
            throw UnsafeError("extension registry code " + std::to_string(code) +
                                  " (EXT opcode) is not allowed when loading weights",
                              ErrorContext{opts_.file, opts_.record, op_offset_});
          push(Value(Global{"copyreg.ext", std::to_string(code)}));
          break;
        }
        default: {
          char buf[8];
          std::snprintf(buf, sizeof buf, "0x%02x", op);
          fail(std::string("unknown pickle opcode ") + buf);
        }
      }
    }
  }

  Value persistent(const Value& pid) {
    event(Event::Kind::persid, "", "");
    if (!opts_.persistent_load) fail("persistent id found but this file has no storage loader");
    return track(opts_.persistent_load(pid, op_offset_));
  }

  // ---- safety of the result
  // One iterative DFS: the result must be acyclic and no deeper than the limit.
  void check_result(const Value& root) {
    enum : uint8_t { kNew = 0, kOpen = 1, kDone = 2 };
    std::unordered_map<const void*, uint8_t> state;
    struct Frame {
      const Value* v;
      size_t depth;
      bool exit;
    };
    std::vector<Frame> stack{{&root, 0, false}};
    auto children = [](const Value& v, std::vector<const Value*>& out) {
      out.clear();
      switch (v.kind()) {
        case Value::Kind::List:
        case Value::Kind::Tuple:
          for (const auto& c : v.items()) out.push_back(&c);
          break;
        case Value::Kind::Set:
          for (const auto& c : v.as_set()) out.push_back(&c);
          break;
        case Value::Kind::Dict:
          for (const auto& [k, val] : v.as_dict()) {
            out.push_back(&k);
            out.push_back(&val);
          }
          out.push_back(&v.as_dict().attributes);
          break;
        case Value::Kind::Object: {
          const Object& o = v.as_object();
          out.push_back(&o.args);
          out.push_back(&o.kwargs);
          out.push_back(&o.state);
          for (const auto& c : o.list_items) out.push_back(&c);
          for (const auto& [k, val] : o.dict_items) {
            out.push_back(&k);
            out.push_back(&val);
          }
          break;
        }
        default: break;
      }
    };
    std::vector<const Value*> kids;
    while (!stack.empty()) {
      Frame f = stack.back();
      stack.pop_back();
      const void* id = f.v->container_id();
      if (id == nullptr) continue;
      if (f.exit) {
        state[id] = kDone;
        continue;
      }
      uint8_t& s = state[id];
      if (s == kOpen) fail("the pickle builds a recursive structure (a container inside itself), which ckpt does not load");
      if (s == kDone) continue;
      if (f.depth > opts_.limits.max_depth)
        throw LimitError("containers nest deeper than " + std::to_string(opts_.limits.max_depth) + " levels",
                         ErrorContext{opts_.file, opts_.record, std::nullopt});
      s = kOpen;
      stack.push_back({f.v, f.depth, true});
      children(*f.v, kids);
      for (const Value* c : kids)
        if (c->container_id() != nullptr) stack.push_back({c, f.depth + 1, false});
    }
  }

  // Empties every container, so that destroying a deep or cyclic structure
  // never recurses and never leaks.
  void dismantle() {
    stack_.clear();
    memo_.clear();
    for (Value& v : arena_) {
      switch (v.kind()) {
        case Value::Kind::List:
        case Value::Kind::Tuple:
          v.items().clear();
          break;
        case Value::Kind::Set: v.as_set().clear(); break;
        case Value::Kind::Dict:
          v.as_dict().clear();
          v.as_dict().attributes = Value();
          break;
        case Value::Kind::Object: {
          Object& o = v.as_object();
          o.args = Value();
          o.kwargs = Value();
          o.state = Value();
          o.list_items.clear();
          o.dict_items.clear();
          break;
        }
        default: break;
      }
    }
    arena_.clear();
  }
};

}  // namespace

Value unpickle(std::span<const std::byte> data, const Options& options, size_t* consumed) {
  Machine m(data, options);
  return m.run(consumed);
}

}  // namespace ckpt::pickle
