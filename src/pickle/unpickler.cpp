// The safe pickle VM. See unpickler.hpp for what it guarantees.
//
// Layout of this file: constants and text helpers; the Machine (reading,
// stack and memo, globals and calls, containers, persistent ids, the loop);
// the result check that makes the output acyclic and shallow; the public
// functions.
//
// Memory safety against hostile input rests on three rules:
//  - every length is compared with the bytes that remain (and with Limits)
//    before anything is allocated or read;
//  - every container the VM creates is kept in `arena_`, so that on any error
//    (and for garbage on success) the VM can empty them all one by one: a
//    cycle or a 10-million-deep chain is then destroyed without recursion;
//  - nothing recursive runs on a value before its depth is known to be within
//    Limits::max_depth (dict keys and set items are walked iteratively before
//    they are hashed; the result is checked once, iteratively, at STOP).
#include "pickle/unpickler.hpp"

#include <algorithm>
#include <limits>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "ckpt/error.hpp"
#include "pickle/numpy.hpp"
#include "pickle/torch_globals.hpp"
#include "pickle/utf8.hpp"

namespace ckpt::detail {

// The decoder's byte on each container it builds (value.hpp keeps one in
// every list/tuple/set and dict for it):
//  - a tuple: 0 when the arena holds it; n >= 1 when it does not, and
//    freeing it recurses through at most n tuples (see Machine::new_tuple);
//  - a dict: 1 when the arena holds it; 0 when it does not (an empty dict a
//    call returned, unchanged since: see Machine::native).
struct DecoderMarks {
  static uint8_t& of_tuple(const Value& v) { return std::get<std::shared_ptr<Value::Sequence>>(v.v_)->decoder_mark; }
  static uint8_t& of_dict(const Value& v) { return std::get<std::shared_ptr<Dict>>(v.v_)->decoder_mark_; }
};

}  // namespace ckpt::detail

namespace ckpt::pickle {
namespace {

using detail::DecoderMarks;

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

const char* op_name(uint8_t op) {
  switch (op) {
    case MARK: return "MARK";
    case STOP: return "STOP";
    case POP: return "POP";
    case POP_MARK: return "POP_MARK";
    case DUP: return "DUP";
    case FLOAT: return "FLOAT";
    case INT: return "INT";
    case BININT: return "BININT";
    case BININT1: return "BININT1";
    case LONG: return "LONG";
    case BININT2: return "BININT2";
    case NONE: return "NONE";
    case PERSID: return "PERSID";
    case BINPERSID: return "BINPERSID";
    case REDUCE: return "REDUCE";
    case STRING: return "STRING";
    case BINSTRING: return "BINSTRING";
    case SHORT_BINSTRING: return "SHORT_BINSTRING";
    case UNICODE: return "UNICODE";
    case BINUNICODE: return "BINUNICODE";
    case APPEND: return "APPEND";
    case BUILD: return "BUILD";
    case GLOBAL: return "GLOBAL";
    case DICT: return "DICT";
    case EMPTY_DICT: return "EMPTY_DICT";
    case APPENDS: return "APPENDS";
    case GET: return "GET";
    case BINGET: return "BINGET";
    case INST: return "INST";
    case LONG_BINGET: return "LONG_BINGET";
    case LIST: return "LIST";
    case EMPTY_LIST: return "EMPTY_LIST";
    case OBJ: return "OBJ";
    case PUT: return "PUT";
    case BINPUT: return "BINPUT";
    case LONG_BINPUT: return "LONG_BINPUT";
    case SETITEM: return "SETITEM";
    case TUPLE: return "TUPLE";
    case EMPTY_TUPLE: return "EMPTY_TUPLE";
    case SETITEMS: return "SETITEMS";
    case BINFLOAT: return "BINFLOAT";
    case PROTO: return "PROTO";
    case NEWOBJ: return "NEWOBJ";
    case EXT1: return "EXT1";
    case EXT2: return "EXT2";
    case EXT4: return "EXT4";
    case TUPLE1: return "TUPLE1";
    case TUPLE2: return "TUPLE2";
    case TUPLE3: return "TUPLE3";
    case NEWTRUE: return "NEWTRUE";
    case NEWFALSE: return "NEWFALSE";
    case LONG1: return "LONG1";
    case LONG4: return "LONG4";
    case BINBYTES: return "BINBYTES";
    case SHORT_BINBYTES: return "SHORT_BINBYTES";
    case SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case BINUNICODE8: return "BINUNICODE8";
    case BINBYTES8: return "BINBYTES8";
    case EMPTY_SET: return "EMPTY_SET";
    case ADDITEMS: return "ADDITEMS";
    case FROZENSET: return "FROZENSET";
    case NEWOBJ_EX: return "NEWOBJ_EX";
    case STACK_GLOBAL: return "STACK_GLOBAL";
    case MEMOIZE: return "MEMOIZE";
    case FRAME: return "FRAME";
    case BYTEARRAY8: return "BYTEARRAY8";
    case NEXT_BUFFER: return "NEXT_BUFFER";
    case READONLY_BUFFER: return "READONLY_BUFFER";
    default: return "?";
  }
}

// ---------------------------------------------------------------- limits

// Python refuses to convert decimal strings of more digits than this to int
// (sys.int_info.default_max_str_digits, 3.11+). The same bound keeps the
// quadratic decimal-to-binary conversion of INT/LONG arguments cheap.
constexpr size_t kMaxDecimalDigits = 4300;

// Hashing a dict key or set item walks it (tuples nest, and a memo lets a
// small pickle build t1 = (t0, t0), t2 = (t1, t1), ... whose walk is
// exponential). The walks of one pickle may visit at most this many values,
// plus kKeyWorkPerByte per byte of input: real keys cost one or a few each.
constexpr uint64_t kKeyWorkBase = uint64_t{1} << 20;
constexpr uint64_t kKeyWorkPerByte = 16;

// What the objects a pickle builds may cost, charged before each one is made:
// a Value on the stack or in a container, a container, a memo slot, the copy
// a memo read makes of a string (or bytes, big int, Size, device). A memo read
// that shares a container, tensor, storage or global costs one Value. Real
// checkpoints need ~20 bytes per byte of pickle (estimated for a state dict of
// small tensors: ~2 KB of charges per ~100 bytes of pickle); a memoized empty
// list costs 108 per byte (protocol 4: 2 bytes for 48 + 112 + 56). Only
// containers of one or two bytes each with nothing in them go past 128 per
// byte. For a 1 MB pickle: 160 MiB.
constexpr uint64_t kGrowthBase = uint64_t{32} << 20;
constexpr uint64_t kGrowthPerByte = 128;
// A container with its shared_ptr block, malloc's header and its arena_ entry.
constexpr uint64_t kSequenceCost = 112;  // list, tuple, set
constexpr uint64_t kDictCost = 168;
constexpr uint64_t kObjectCost = 320;    // an inert Object (inspection)

// Untrusted text quoted in error messages is cut to this many bytes.
constexpr size_t kMaxQuoted = 60;

// ---------------------------------------------------------------- text helpers

std::string hex_byte(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", b);
  return buf;
}

// 'text' with non-printable bytes escaped, shortened when long.
std::string quote(std::string_view s) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxQuoted; ++i) {
    auto c = static_cast<uint8_t>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > kMaxQuoted) out += "...";
  return out + "'";
}

std::string kind_of(const Value& v) { return std::string(v.kind_name()); }

bool is_digit(char c) { return c >= '0' && c <= '9'; }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Python truthiness, for BUILD's `if state:` / `if slotstate:`.
bool truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::None: return false;
    case Value::Kind::Bool: return v.as_bool();
    case Value::Kind::Int: return v.as_int() != 0;
    case Value::Kind::Float: return v.as_float() != 0.0;
    case Value::Kind::Complex: return v.as_complex() != std::complex<double>{};
    case Value::Kind::String: return !v.as_string().empty();
    case Value::Kind::Bytes: return !v.as_bytes().empty();
    case Value::Kind::List:
    case Value::Kind::Tuple: return !v.items().empty();
    case Value::Kind::Set: return !v.as_set().empty();
    case Value::Kind::Dict: return !v.as_dict().empty();
    default: return true;
  }
}

// Calls f(child) for each value held by the container `v` (none for leaves).
template <typename F>
void for_each_child(const Value& v, F&& f) {
  switch (v.kind()) {
    case Value::Kind::List:
    case Value::Kind::Tuple:
      for (const auto& c : v.items()) f(c);
      break;
    case Value::Kind::Set:
      for (const auto& c : v.as_set()) f(c);
      break;
    case Value::Kind::Dict:
      for (const auto& [k, val] : v.as_dict()) {
        f(k);
        f(val);
      }
      f(v.as_dict().attributes);
      break;
    case Value::Kind::Object: {
      const Object& o = v.as_object();
      f(o.args);
      f(o.kwargs);
      f(o.state);
      for (const auto& c : o.list_items) f(c);
      for (const auto& [k, val] : o.dict_items) {
        f(k);
        f(val);
      }
      break;
    }
    default: break;
  }
}

// Drops every value a container holds (its own children only).
void empty_container(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::List:
    case Value::Kind::Tuple: v.items().clear(); break;
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

// ---------------------------------------------------------------- the memo plan

// The memo index of protocol-0 GET / PUT, read as CPython's C unpickler
// (the one torch runs) reads it: PyLong_FromString(line, base 10) on the
// NUL-terminated line, so text after a NUL byte is ignored, ASCII
// whitespace may surround the number, a sign is allowed and single
// underscores may separate digits ("p 7", "g1_0", "p+7"). Negative indices
// and indices past Py_ssize_t fail in Python before anything runs.
struct MemoIndex {
  enum Status : uint8_t { ok, malformed, negative, out_of_range } status;
  uint64_t value;
};
MemoIndex parse_memo_index(std::string_view line) {
  std::string_view s = line.substr(0, std::min(line.size(), line.find('\0')));
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  size_t i = 0, n = s.size();
  while (i < n && space(s[i])) ++i;
  while (n > i && space(s[n - 1])) --n;
  bool negative = false;
  if (i < n && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  uint64_t v = 0;
  bool ok = i < n && is_digit(s[i]), overflow = false;
  for (size_t j = i; ok && j < n; ++j) {
    if (s[j] == '_') {
      ok = j + 1 < n && is_digit(s[j + 1]);  // a digit precedes (checked by the loop) and follows
      continue;
    }
    if (!is_digit(s[j])) {
      ok = false;
      break;
    }
    if (v > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - 9) / 10) overflow = true;
    else v = v * 10 + static_cast<uint64_t>(s[j] - '0');
  }
  if (!ok) return {MemoIndex::malformed, 0};
  if (negative && v != 0) return {MemoIndex::negative, 0};
  if (overflow) return {MemoIndex::out_of_range, 0};
  return {MemoIndex::ok, v};
}

// Which memo entries a pickle reads. Python's and torch's picklers memoize
// every object they write (a state dict: ~9 entries per tensor: its name,
// persistent id, storage key, size and stride tuples, hooks, arguments,
// result), and read back a handful by GET (the 'storage' and 'cpu' strings,
// the globals, a storage key seen before). Keeping every entry keeps every
// temporary object alive to the end of the run: for 100,000 small tensors,
// most of the VM's memory and a large part of its time. Opcode lengths do not
// depend on the VM's state (pickletools.genops decodes them statically), so
// one pass over the opcodes up to STOP finds every GET the run can reach,
// and PUT stores only the entries one of them reads. The pass stops where the
// run would fail (an unknown opcode, a truncated argument): no GET past that
// point can run. Indices must stay dense (at most half the pickle's size, as
// picklers number entries 0, 1, 2...); otherwise there is no plan and every
// entry is stored, as before.
struct MemoPlan {
  static constexpr uint32_t kUnread = std::numeric_limits<uint32_t>::max();
  std::vector<uint32_t> slot;  // memo index -> its place among the read entries, or kUnread
  uint32_t read = 0;           // entries some GET reads
};

std::optional<MemoPlan> plan_memo(std::span<const std::byte> data) {
  const char* p = reinterpret_cast<const char*>(data.data());
  const size_t size = data.size();
  const uint64_t max_index = size / 2 + 64;
  enum : uint8_t { kPut = 1, kRead = 2 };
  std::vector<uint8_t> seen;  // per memo index
  size_t used = 0;            // highest index noted + 1
  uint64_t distinct = 0;      // indices stored so far: MEMOIZE's index
  size_t pos = 0;
  const auto note = [&](uint64_t index, uint8_t what) {
    if (index > max_index) return false;
    if (index >= seen.size()) seen.resize(std::max<size_t>(static_cast<size_t>(index) + 1, seen.size() * 2), 0);
    used = std::max(used, static_cast<size_t>(index) + 1);
    if (what == kPut && !(seen[index] & kPut)) ++distinct;
    seen[index] |= what;
    return true;
  };
  const auto le = [&](size_t n) {  // an n-byte little-endian argument (n <= 8), present
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[pos + i])) << (8 * i);
    return v;
  };
  const auto skip_line = [&]() -> const char* {  // start of the line; pos moves past its newline
    const void* nl = std::memchr(p + pos, '\n', size - pos);
    if (nl == nullptr) return nullptr;
    const char* start = p + pos;
    pos = static_cast<size_t>(static_cast<const char*>(nl) - p) + 1;
    return start;
  };
  bool done = false;
  while (!done && pos < size) {
    const auto op = static_cast<uint8_t>(p[pos++]);
    const size_t left = size - pos;
    size_t arg = 0;  // fixed bytes after the opcode
    uint64_t len = 0;  // then this many bytes of data
    switch (op) {
      case STOP: done = true; break;
      case MARK: case POP: case POP_MARK: case DUP: case NONE: case NEWTRUE: case NEWFALSE: case BINPERSID:
      case REDUCE: case APPEND: case BUILD: case DICT: case EMPTY_DICT: case APPENDS: case LIST: case EMPTY_LIST:
      case OBJ: case SETITEM: case TUPLE: case EMPTY_TUPLE: case SETITEMS: case NEWOBJ: case TUPLE1: case TUPLE2:
      case TUPLE3: case EMPTY_SET: case ADDITEMS: case FROZENSET: case NEWOBJ_EX: case STACK_GLOBAL:
        break;
      case MEMOIZE:
        if (!note(distinct, kPut)) return std::nullopt;
        break;
      case PROTO: case BININT1: case EXT1: arg = 1; break;
      case BININT2: case EXT2: arg = 2; break;
      case BININT: case EXT4: arg = 4; break;
      case BINFLOAT: case FRAME: arg = 8; break;
      case BINPUT: case BINGET: case LONG_BINPUT: case LONG_BINGET: {
        arg = op == BINPUT || op == BINGET ? 1 : 4;
        if (left < arg) return std::nullopt;
        if (!note(le(arg), op == BINPUT || op == LONG_BINPUT ? kPut : kRead)) return std::nullopt;
        break;
      }
      case SHORT_BINSTRING: case SHORT_BINUNICODE: case SHORT_BINBYTES: case LONG1:
        if (left < 1) return std::nullopt;
        arg = 1;
        len = le(1);
        break;
      case BINSTRING: case LONG4: case BINUNICODE: case BINBYTES:
        if (left < 4) return std::nullopt;
        arg = 4;
        len = le(4);
        if ((op == BINSTRING || op == LONG4) && static_cast<int32_t>(len) < 0) return std::nullopt;
        break;
      case BINUNICODE8: case BINBYTES8: case BYTEARRAY8:
        if (left < 8) return std::nullopt;
        arg = 8;
        len = le(8);
        break;
      case INT: case LONG: case FLOAT: case STRING: case UNICODE: case PERSID:
        if (!skip_line()) done = true;
        break;
      case GLOBAL: case INST:
        if (!skip_line() || !skip_line()) done = true;
        break;
      case PUT: case GET: {
        const char* start = skip_line();
        if (start == nullptr) {
          done = true;
          break;
        }
        const MemoIndex m = parse_memo_index(std::string_view(start, static_cast<size_t>(p + pos - 1 - start)));
        if (m.status != MemoIndex::ok) {  // the run fails here
          done = true;
          break;
        }
        if (!note(m.value, op == PUT ? kPut : kRead)) return std::nullopt;
        break;
      }
      default: done = true;  // an unknown opcode, or out-of-band buffers: the run fails here
    }
    if (done) break;
    if (arg > left || len > left - arg) break;  // truncated: the run fails here
    pos += arg + static_cast<size_t>(len);
  }
  MemoPlan plan;
  plan.slot.assign(used, MemoPlan::kUnread);
  for (size_t i = 0; i < used; ++i)
    if (seen[i] & kRead) plan.slot[i] = plan.read++;
  return plan;
}

// ---------------------------------------------------------------- the machine

class Machine final : public CallContext {
 public:
  Machine(std::span<const std::byte> data, const Options& opts)
      : data_(data),
        opts_(opts),
        key_budget_(kKeyWorkBase + kKeyWorkPerByte * static_cast<uint64_t>(data.size())),
        growth_budget_(kGrowthBase + kGrowthPerByte * static_cast<uint64_t>(data.size())) {}

  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;
  ~Machine() override { dismantle(); }

  Value run(size_t* consumed) {
    try {
      start_memo();
      Value v = loop();
      check_result(v);
      if (consumed) *consumed = pos_;
      if (opts_.numpy) v = decode_numpy(v, ErrorContext{opts_.file, opts_.record});
      return v;
    } catch (Error& e) {
      e.add_context(where());
      dismantle();
      throw;
    } catch (...) {
      dismantle();
      throw;
    }
  }

  // ---- CallContext (for the native implementations of allowed globals)
  const Limits& limits() const override { return opts_.limits; }

  void check_key(const Value& key) override {
    // Fast path: the common str / int key.
    if (key.kind() != Value::Kind::Tuple) {
      charge_key_work();
      if (!key.hashable()) fail("unhashable " + kind_of(key) + " used as a dict key or set item");
      return;
    }
    key_walk_.clear();
    key_walk_.push_back({&key, 1});
    while (!key_walk_.empty()) {
      auto [v, depth] = key_walk_.back();
      key_walk_.pop_back();
      charge_key_work();
      switch (v->kind()) {
        case Value::Kind::List:
        case Value::Kind::Dict:
        case Value::Kind::Set:
          fail("unhashable " + kind_of(*v) + " used as a dict key or set item");
        case Value::Kind::Tuple:
          if (depth > opts_.limits.max_depth) too_deep();
          for (const auto& c : v->items()) key_walk_.push_back({&c, depth + 1});
          break;
        default: break;
      }
    }
  }

  void set_add(Value& set, Value item) override {
    check_key(item);
    List& items = set.as_set();
    auto [it, fresh] = set_index_.try_emplace(set.container_id());
    auto& index = it->second;
    if (fresh)
      for (size_t i = 0; i < items.size(); ++i) index.emplace(items[i].hash(), i);
    const size_t h = item.hash();
    auto [lo, hi] = index.equal_range(h);
    for (auto i = lo; i != hi; ++i)
      if (items[i->second] == item) return;  // Python keeps the first of equal items
    index.emplace(h, items.size());
    items.push_back(std::move(item));
  }

  Value call(const Value& callable, Value args) override {
    call_event(Event::Kind::reduce, callable);
    return invoke(callable, std::move(args), "REDUCE", Value());
  }

 private:
  std::span<const std::byte> data_;
  const Options& opts_;
  size_t pos_ = 0;
  uint64_t op_offset_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;  // stack heights at each open MARK (the metastack), O(1) per MARK
  // The memo. Picklers (Python's, torch's) number entries 0, 1, 2, ...: those
  // live in a vector, indexed directly (a state dict puts ~8 entries in the
  // memo per tensor; a hash map's nodes and rehashes were a tenth of the
  // open time of a 100,000-tensor file). An index far past the entries
  // stored so far (possible in a hand-made pickle) goes to the map, so the
  // vector stays within twice the number of entries.
  std::vector<std::optional<Value>> memo_dense_;
  std::unordered_map<uint64_t, Value> memo_sparse_;
  size_t memo_count_ = 0;
  // With a plan (opts_.memo_plan and dense indices, see plan_memo): only the
  // entries some GET reads are kept, in memo_dense_ by their plan slot;
  // memo_stored_ remembers which indices were stored (for MEMOIZE's count).
  std::optional<MemoPlan> plan_;
  std::vector<bool> memo_stored_;
  std::vector<Value> arena_;  // every container the VM created, to empty them without recursion
  // Containers returned by persistent_load: not ours to change or empty. The
  // values are kept so that their addresses stay theirs for the whole run.
  std::unordered_set<const void*> foreign_;
  std::vector<Value> foreign_values_;
  std::unordered_map<const void*, std::unordered_multimap<size_t, size_t>> set_index_;  // set -> hash -> position
  std::vector<std::pair<const Value*, size_t>> key_walk_;
  Value empty_tuple_;  // pushed by EMPTY_TUPLE (None until the first)
  uint64_t key_work_ = 0;
  const uint64_t key_budget_;
  uint64_t growth_ = 0;
  const uint64_t growth_budget_;

  // ---- errors
  ErrorContext where() const { return ErrorContext{opts_.file, opts_.record, op_offset_}; }
  [[noreturn]] void fail(const std::string& msg) const { throw FormatError(msg, where()); }
  [[noreturn]] void too_deep() const {
    throw LimitError("nesting deeper than " + std::to_string(opts_.limits.max_depth) +
                         " levels (lists, tuples, dicts, sets and objects inside each other)",
                     where());
  }
  [[noreturn]] void unsafe(const std::string& msg) const { throw UnsafeError(msg, where()); }
  bool inspecting() const { return opts_.policy == GlobalPolicy::inspect; }

  // Charges `bytes` of object growth before it happens (see kGrowthBase).
  void charge(uint64_t bytes) {
    growth_ += bytes;
    if (growth_ > growth_budget_)
      throw LimitError("pickle builds more than " + std::to_string(growth_budget_ >> 20) +
                           " MiB of objects (the budget for a pickle of " + std::to_string(data_.size()) +
                           " bytes: " + std::to_string(kGrowthBase >> 20) + " MiB + " +
                           std::to_string(kGrowthPerByte) + " bytes per byte)",
                       where());
  }
  void charge_key_work() {
    if (++key_work_ > key_budget_)
      throw LimitError("dict keys and set items are too large to hash (more than " + std::to_string(key_budget_) +
                           " values walked in all)",
                       where());
  }

  // ---- reading
  size_t remaining() const { return data_.size() - pos_; }
  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail(std::string("pickle is truncated: ") + what + " needs " + std::to_string(n) + " bytes, only " +
           std::to_string(remaining()) + " remain");
  }
  const char* at() const { return reinterpret_cast<const char*>(data_.data()) + pos_; }
  uint8_t u8(const char* what) {
    need(1, what);
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t uint_le(size_t n, const char* what) {
    need(n, what);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }
  // `n` bytes of string data: checked against what remains first, then the limit.
  std::string_view take(uint64_t n, const char* what) {
    if (n > remaining())
      fail(std::string("pickle is truncated: ") + what + " of " + std::to_string(n) + " bytes, but only " +
           std::to_string(remaining()) + " remain");
    if (n > opts_.limits.max_string)
      throw LimitError(std::string(what) + " of " + std::to_string(n) + " bytes passes the limit of " +
                           std::to_string(opts_.limits.max_string) + " bytes",
                       where());
    std::string_view s(at(), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  // A text argument up to (not including) '\n', as Python's readline()[:-1].
  std::string_view line(const char* what) {
    const uint64_t max = opts_.limits.max_string;
    const uint64_t window = max >= remaining() ? remaining() : max + 1;
    const void* nl = std::memchr(at(), '\n', static_cast<size_t>(window));
    if (nl == nullptr) {
      if (window < remaining())
        throw LimitError(std::string(what) + " text argument passes the limit of " +
                             std::to_string(opts_.limits.max_string) + " bytes",
                         where());
      fail(std::string("pickle is truncated: no newline ends the ") + what + " argument");
    }
    const size_t n = static_cast<size_t>(static_cast<const char*>(nl) - at());
    std::string_view s(at(), n);
    pos_ += n + 1;
    return s;
  }
  std::string name_line(const char* what) {
    std::string_view s = line(what);
    if (s.empty()) fail(std::string(what) + " names an empty module or attribute");
    if (!utf8::valid(s)) fail(std::string(what) + " name " + quote(s) + " is not valid UTF-8");
    return std::string(s);
  }

  // ---- stack
  void push(Value v) {
    if (stack_.size() + marks_.size() >= opts_.limits.max_stack)
      throw LimitError("pickle stack passes " + std::to_string(opts_.limits.max_stack) + " entries", where());
    charge(sizeof(Value));
    stack_.push_back(std::move(v));
  }
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  [[noreturn]] void underflow(uint8_t op) const {
    fail(std::string(op_name(op)) + (stack_.size() == base() && !marks_.empty()
                                         ? " needs a value, but the stack is empty since the last MARK"
                                         : " needs a value, but the stack is empty"));
  }
  Value pop(uint8_t op) {
    if (stack_.size() <= base()) underflow(op);
    Value v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  Value& top(uint8_t op) {
    if (stack_.size() <= base()) underflow(op);
    return stack_.back();
  }
  // Pops everything above the last MARK, and the mark.
  List pop_mark(uint8_t op) {
    if (marks_.empty()) fail(std::string(op_name(op)) + " needs a MARK, but none is open");
    const size_t m = marks_.back();
    marks_.pop_back();
    List items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
               std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  // Closes the last MARK without moving what is above it (no allocation): returns
  // the stack height at the mark, after checking that a value lies below it
  // (the target of APPENDS / SETITEMS). The caller consumes stack_[m, end).
  size_t pop_mark_in_place(uint8_t op) {
    if (marks_.empty()) fail(std::string(op_name(op)) + " needs a MARK, but none is open");
    const size_t m = marks_.back();
    marks_.pop_back();
    if (m <= base()) {
      stack_.resize(m);  // as pop_mark would have left it, for the message
      underflow(op);
    }
    return m;
  }
  Value track(Value v) {
    if (v.container_id() != nullptr) {
      charge(v.is_dict() ? kDictCost : v.is_object() ? kObjectCost : kSequenceCost);
      hold(v);
    }
    return v;
  }
  void hold(const Value& v) {
    arena_.push_back(v);
    if (v.is_dict()) DecoderMarks::of_dict(v) = 1;
  }
  // How deep freeing a tuple may recurse before the arena must hold it.
  static constexpr uint8_t kMaxLooseDepth = 32;
  Value new_tuple(List items) {
    // No opcode changes a tuple once it is made, so a cycle through it
    // passes through a list, set, dict or object, all of which the arena
    // holds (and empties, breaking the cycle). What is left is depth: a
    // tuple whose children are leaves, containers the arena holds, loose
    // empty dicts and loose tuples of depth < kMaxLooseDepth is freed with
    // bounded recursion, so the arena need not hold it, and it is freed as
    // soon as nothing refers to it. A state dict's persistent ids, sizes and
    // strides and the argument tuples of its tensors (four per tensor) are
    // such tuples. A deeper chain is held every kMaxLooseDepth tuples.
    // Charged as any other tuple.
    uint8_t depth = 0;  // of the deepest child freed along with the tuple
    for (const Value& x : items) {
      if (x.is_tuple()) depth = std::max(depth, DecoderMarks::of_tuple(x));
      else if (x.is_dict() && DecoderMarks::of_dict(x) == 0) depth = std::max<uint8_t>(depth, 1);
    }
    if (depth >= kMaxLooseDepth) return track(Value::tuple(std::move(items)));
    charge(kSequenceCost);
    Value t = Value::tuple(std::move(items));
    DecoderMarks::of_tuple(t) = static_cast<uint8_t>(depth + 1);
    return t;
  }

  // ---- memo
  void start_memo() {
    if (!opts_.memo_plan) return;
    plan_ = plan_memo(data_);
    if (!plan_) return;
    charge(plan_->slot.size() * (sizeof(uint32_t) + 1));
    memo_stored_.assign(plan_->slot.size(), false);
    memo_dense_.resize(plan_->read);
    charge(plan_->read * sizeof(memo_dense_[0]));
  }
  Value* memo_find(uint64_t index) {
    if (plan_) {
      if (index >= plan_->slot.size() || plan_->slot[index] == MemoPlan::kUnread) return nullptr;
      auto& v = memo_dense_[plan_->slot[index]];
      return v ? &*v : nullptr;
    }
    // An entry stays where its first PUT stored it: an index put in the map
    // while the vector was short is still in the map after the vector grows.
    if (index < memo_dense_.size() && memo_dense_[index]) return &*memo_dense_[index];
    if (memo_sparse_.empty()) return nullptr;
    auto it = memo_sparse_.find(index);
    return it == memo_sparse_.end() ? nullptr : &it->second;
  }
  void memo_put(uint64_t index, uint8_t op) {
    if (stack_.size() <= base()) underflow(op);
    if (plan_) {
      // The plan saw every opcode the run reaches, so index < slot.size();
      // grown anyway (as never read) should that ever not hold.
      if (index >= plan_->slot.size()) {
        charge((index + 1 - plan_->slot.size()) * (sizeof(uint32_t) + 1));
        plan_->slot.resize(static_cast<size_t>(index) + 1, MemoPlan::kUnread);
        memo_stored_.resize(static_cast<size_t>(index) + 1, false);
      }
      if (!memo_stored_[index]) {
        if (memo_count_ >= opts_.limits.max_memo)
          throw LimitError("pickle memo passes " + std::to_string(opts_.limits.max_memo) + " entries", where());
        ++memo_count_;
        memo_stored_[index] = true;
      }
      if (const uint32_t slot = plan_->slot[index]; slot != MemoPlan::kUnread) memo_dense_[slot] = stack_.back();
      return;
    }
    if (Value* v = memo_find(index)) {
      *v = stack_.back();
      return;
    }
    if (memo_count_ >= opts_.limits.max_memo)
      throw LimitError("pickle memo passes " + std::to_string(opts_.limits.max_memo) + " entries", where());
    ++memo_count_;
    if (index < memo_dense_.size() || index < 2 * memo_count_ + 64) {
      if (index >= memo_dense_.size()) {
        charge((index + 1 - memo_dense_.size()) * sizeof(memo_dense_[0]));
        memo_dense_.resize(static_cast<size_t>(index) + 1);
      }
      memo_dense_[index] = stack_.back();
    } else {
      charge(sizeof(Value) + 64);  // a map node
      memo_sparse_.emplace(index, stack_.back());
    }
  }
  void memo_get(uint64_t index) {
    Value* v = memo_find(index);
    if (v == nullptr) fail("memo entry " + std::to_string(index) + " is read before it is stored");
    switch (v->kind()) {  // what copying it allocates besides the Value itself
      case Value::Kind::String: charge(v->as_string().size()); break;
      case Value::Kind::Bytes: charge(v->as_bytes().size()); break;
      case Value::Kind::BigInt: charge(v->as_bigint().bytes.size()); break;
      case Value::Kind::Size: charge(v->as_size().dims.size() * sizeof(int64_t)); break;
      case Value::Kind::Device: charge(v->as_device().name.size()); break;
      default: break;  // containers, tensors, storages and globals are shared, not copied
    }
    push(*v);
  }
  uint64_t memo_index(std::string_view line, const char* what) {
    const MemoIndex m = parse_memo_index(line);
    switch (m.status) {
      case MemoIndex::ok: return m.value;
      case MemoIndex::malformed: fail(std::string("malformed ") + what + " index " + quote(line));
      case MemoIndex::negative: fail(std::string("negative ") + what + " index " + quote(line));
      case MemoIndex::out_of_range: fail(std::string(what) + " index " + quote(line) + " is out of range");
    }
    return m.value;
  }

  // ---- numbers
  // Two's complement little-endian bytes (LONG1 / LONG4): int64 when it fits,
  // else a BigInt in minimal form.
  static Value int_from_le(std::string_view bytes) {
    size_t n = bytes.size();
    const auto b = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
    // Drop redundant sign bytes.
    while (n > 1 && ((b(n - 1) == 0 && !(b(n - 2) & 0x80)) || (b(n - 1) == 0xff && (b(n - 2) & 0x80)))) --n;
    if (n == 0) return Value(int64_t{0});
    if (n <= 8) {
      uint64_t v = 0;
      for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(b(i)) << (8 * i);
      if (n < 8 && (b(n - 1) & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
      return Value(static_cast<int64_t>(v));
    }
    BigInt big;
    big.bytes.assign(reinterpret_cast<const uint8_t*>(bytes.data()), reinterpret_cast<const uint8_t*>(bytes.data()) + n);
    return Value(std::move(big));
  }

  // Decimal text of INT / LONG (optional sign; LONG may end in 'L').
  Value parse_int(std::string_view s, const char* what) {
    std::string_view digits = s;
    bool neg = false;
    if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
      neg = digits[0] == '-';
      digits.remove_prefix(1);
    }
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), is_digit))
      fail(std::string("malformed ") + what + " argument " + quote(s));
    if (digits.size() > kMaxDecimalDigits)
      throw LimitError(std::string(what) + " argument has " + std::to_string(digits.size()) +
                           " digits, more than Python's limit of " + std::to_string(kMaxDecimalDigits),
                       where());
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data() + (s[0] == '+' ? 1 : 0), s.data() + s.size(), v);
    if (ec == std::errc() && p == s.data() + s.size()) return Value(v);
    // Too big for int64: base 1e9 chunks into 32-bit limbs, then two's complement.
    std::vector<uint32_t> limbs;
    size_t i = 0;
    size_t chunk = digits.size() % 9 == 0 ? 9 : digits.size() % 9;
    while (i < digits.size()) {
      uint32_t c = 0, mul = 1;
      for (size_t k = 0; k < chunk; ++k, ++i) {
        c = c * 10 + static_cast<uint32_t>(digits[i] - '0');
        mul *= 10;
      }
      uint64_t carry = c;
      for (auto& l : limbs) {
        uint64_t cur = static_cast<uint64_t>(l) * mul + carry;
        l = static_cast<uint32_t>(cur);
        carry = cur >> 32;
      }
      if (carry) limbs.push_back(static_cast<uint32_t>(carry));
      chunk = 9;
    }
    std::string bytes;
    bytes.reserve(limbs.size() * 4 + 1);
    for (uint32_t l : limbs)
      for (int k = 0; k < 4; ++k) bytes += static_cast<char>((l >> (8 * k)) & 0xff);
    bytes += '\0';  // room for the sign bit
    if (neg) {
      unsigned carry = 1;
      for (auto& ch : bytes) {
        unsigned cur = static_cast<uint8_t>(~static_cast<uint8_t>(ch)) + carry;
        ch = static_cast<char>(cur & 0xff);
        carry = cur >> 8;
      }
    }
    return int_from_le(bytes);
  }

  double parse_float(std::string_view s) {
    double d = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
    if (s.empty() || ec != std::errc() || p != s.data() + s.size()) fail("malformed FLOAT argument " + quote(s));
    return d;
  }

  // ---- strings
  // STRING: a quoted Python 2 repr, decoded as codecs.escape_decode does.
  std::string parse_string_literal(std::string_view s) {
    if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front())
      fail("the STRING argument " + quote(s) + " is not quoted");
    s = s.substr(1, s.size() - 2);
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\') {
        out += s[i];
        continue;
      }
      if (++i == s.size()) fail("STRING argument ends with a lone backslash");
      const char c = s[i];
      switch (c) {
        case '\n': break;  // line continuation
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': {
          if (s.size() - i < 3 || hex_value(s[i + 1]) < 0 || hex_value(s[i + 2]) < 0)
            fail("invalid \\x escape in STRING argument");
          out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
          i += 2;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {  // up to three octal digits
            unsigned v = static_cast<unsigned>(c - '0');
            for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k)
              v = v * 8 + static_cast<unsigned>(s[++i] - '0');
            out += static_cast<char>(v & 0xff);
          } else {
            out += '\\';  // unknown escapes are kept as they are
            out += c;
          }
      }
    }
    return out;
  }

  // UNICODE: raw-unicode-escape. Bytes are Latin-1 code points; only
  // \uXXXX and \UXXXXXXXX are escapes (a backslash before anything else,
  // including another backslash, is literal and consumes that character).
  std::string parse_raw_unicode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      const auto c = static_cast<uint8_t>(s[i++]);
      if (c != '\\' || i == s.size()) {
        utf8::append(out, c);
        continue;
      }
      const char e = s[i++];
      if (e != 'u' && e != 'U') {
        out += '\\';
        utf8::append(out, static_cast<uint8_t>(e));
        continue;
      }
      const size_t n = e == 'u' ? 4 : 8;
      if (s.size() - i < n) fail(std::string("truncated \\") + e + " escape in UNICODE argument");
      uint32_t cp = 0;
      for (size_t k = 0; k < n; ++k) {
        const int h = hex_value(s[i + k]);
        if (h < 0) fail(std::string("malformed \\") + e + " escape in UNICODE argument");
        cp = cp * 16 + static_cast<uint32_t>(h);
      }
      i += n;
      if (cp > 0x10FFFF) fail("\\U escape out of range in UNICODE argument");
      if (cp >= 0xD800 && cp <= 0xDFFF) fail("UNICODE argument holds a lone surrogate, which ckpt cannot represent");
      utf8::append(out, cp);
    }
    return out;
  }

  // Python 2 str (STRING / BINSTRING / SHORT_BINSTRING): decoded as UTF-8, as
  // torch.load(encoding='utf-8') does; bytes when it is not UTF-8.
  static Value py2_string(std::string_view s) {
    if (utf8::valid(s)) return Value(std::string(s));
    return Value::bytes(std::string(s));
  }

  Value unicode(std::string_view s, const char* what) {
    if (!utf8::valid(s)) fail(std::string(what) + " string is not valid UTF-8");
    return Value(std::string(s));
  }

  // ---- events
  void event(Event::Kind kind, const std::string& module, const std::string& name, bool allowed) {
    if (opts_.observer == nullptr) return;
    opts_.observer->on_event(Event{kind, module, name, op_offset_, allowed, opts_.record});
  }
  void call_event(Event::Kind kind, const Value& callable) {
    if (opts_.observer == nullptr) return;
    switch (callable.kind()) {
      case Value::Kind::Global: {
        const Global& g = callable.as_global();
        event(kind, g.module, g.name, is_allowed_global(g.module, g.name));
        break;
      }
      case Value::Kind::Object:
        event(kind, callable.as_object().module, callable.as_object().name, false);
        break;
      case Value::Kind::DType: event(kind, "torch", std::string(name(callable.as_dtype())), false); break;
      default: event(kind, "", kind_of(callable), false);
    }
  }

  // ---- globals
  std::string refused_message(const std::string& module, const std::string& qualified) const {
    if (module == "numpy" || module.starts_with("numpy."))
      return "global '" + qualified +
             "' (numpy) is not allowed when loading weights; numpy arrays and scalars are decoded, never "
             "executed, with LoadOptions::numpy (ckpt CLI: --numpy)";
    return "global '" + qualified +
           "' is not allowed when loading weights (use 'ckpt scan' to inspect the file, or load with "
           "weights_only=false (ckpt CLI: --objects) to see it as an inert object)";
  }

  Value resolve_global(std::string module, std::string name) {
    map_global_name(module, name);
    const bool allowed = is_allowed_global(module, name);
    event(Event::Kind::global, module, name, allowed);
    if (allowed) {
      if (module == "torch") {
        if (auto d = dtype_from_name(name)) return Value(*d);
      }
      return Value(Global{std::move(module), std::move(name)});
    }
    const bool inert = inspecting() || (opts_.numpy && is_numpy_global(module, name)) ||
                       (!is_blocked_module(module) && opts_.accept_inert && opts_.accept_inert(module, name));
    if (!inert) unsafe(refused_message(module, module + "." + name));
    return Value(Global{std::move(module), std::move(name)});
  }

  // ---- calls (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ)
  Value make_object(const Global& g, const char* how, Value args, Value kwargs) {
    auto o = std::make_shared<Object>();
    o->module = g.module;
    o->name = g.name;
    o->how = how;
    o->args = std::move(args);
    o->kwargs = std::move(kwargs);
    return track(Value(std::move(o)));
  }

  Value call_op(uint8_t op, Event::Kind kind, const Value& callable, Value args, Value kwargs = Value()) {
    call_event(kind, callable);
    if (!args.is_tuple()) fail(std::string(op_name(op)) + " arguments are a " + kind_of(args) + ", not a tuple");
    return invoke(callable, std::move(args), op_name(op), std::move(kwargs));
  }

  Value invoke(const Value& callable, Value args, const char* how, Value kwargs) {
    if (callable.kind() == Value::Kind::Global) {
      const Global& g = callable.as_global();
      const bool has_kwargs = kwargs.is_dict() && !kwargs.as_dict().empty();
      if (!is_allowed_global(g.module, g.name)) return make_object(g, how, std::move(args), std::move(kwargs));
      if (is_callable_global(g) && !has_kwargs) return native(g, args);
      // Allowed as a value (a class such as torch.Tensor), but calling it is not modelled.
      if (inspecting()) return make_object(g, how, std::move(args), std::move(kwargs));
      throw UnsupportedError(std::string(how) + " of '" + g.qualified() + "'" +
                                 (has_kwargs ? " with keyword arguments" : "") + " is not supported",
                             where());
    }
    if (!inspecting())
      unsafe(std::string(how) + " on a " + kind_of(callable) +
             " is not allowed when loading weights: only allow-listed functions and classes can be called");
    if (callable.is_object()) {
      // Calling an inert object (e.g. the result of builtins.getattr): an
      // inert `<module.name>.__call__(object, *args)`.
      const Object& callee = callable.as_object();
      List call_args;
      call_args.reserve(args.as_tuple().size() + 1);
      call_args.push_back(callable);
      for (const auto& a : args.as_tuple()) call_args.push_back(a);
      return make_object(Global{callee.qualified(), "__call__"}, how, new_tuple(std::move(call_args)),
                         std::move(kwargs));
    }
    fail(std::string(how) + " on a " + kind_of(callable) + ": only classes and functions can be called");
  }

  Value native(const Global& g, const Value& args) {
    try {
      Value r = call_torch_global(g, args.as_tuple(), *this);
      if (r.is_dict() && r.as_dict().empty() && r.as_dict().attributes.is_none()) {
        // An empty dict (a state dict's per-tensor hooks, OrderedDict())
        // holds nothing and is in no cycle: loose until an opcode changes
        // it (before_change), so it is freed with whatever holds it.
        charge(kDictCost);
        return r;
      }
      return track(std::move(r));
    } catch (const TypeError& e) {  // a Value accessor met the wrong kind: malformed arguments
      throw FormatError(g.qualified() + ": " + e.message(), where());
    }
  }

  // ---- BUILD
  void build(Value& inst, const Value& state) {
    before_change(inst, BUILD);
    switch (inst.kind()) {
      case Value::Kind::Object: {
        Object& o = inst.as_object();
        event(Event::Kind::build, o.module, o.name, false);
        o.state = state;
        return;
      }
      case Value::Kind::Dict: {
        Dict& d = inst.as_dict();
        if (d.ordered) {  // OrderedDict.__dict__.update(state): a state dict's _metadata
          event(Event::Kind::build, "collections", "OrderedDict", true);
          set_attributes(d, state);
          return;
        }
        event(Event::Kind::build, "builtins", "dict", false);
        break;
      }
      case Value::Kind::Tensor:
        // Tensor.set_ / Parameter.__setstate__: the state carries Python
        // attributes ckpt does not model.
        event(Event::Kind::build, "torch", "Tensor", true);
        return;
      default: event(Event::Kind::build, "builtins", kind_of(inst), false);
    }
    if (!inspecting())
      unsafe("BUILD on a " + kind_of(inst) +
             " is not allowed when loading weights (only on tensors, Parameters and OrderedDicts)");
    // Python's load_build: a falsy state sets nothing; anything else needs a __dict__.
    if (state.is_tuple() && state.as_tuple().size() == 2) {
      if (!truthy(state.as_tuple()[0]) && !truthy(state.as_tuple()[1])) return;
    } else if (!truthy(state)) {
      return;
    }
    fail("BUILD sets attributes on a " + kind_of(inst) + ", which has none");
  }

  // state, or (state, slotstate): dicts of attribute names to values.
  void set_attributes(Dict& d, const Value& state) {
    if (d.attributes.is_none()) d.attributes = track(Value::dict());
    const bool pair = state.is_tuple() && state.as_tuple().size() == 2;
    const Value parts[2] = {pair ? state.as_tuple()[0] : state, pair ? state.as_tuple()[1] : Value()};
    for (const Value& part : parts) {
      if (!truthy(part)) continue;
      if (!part.is_dict()) fail("BUILD state for an OrderedDict is a " + kind_of(part) + ", not a dict");
      for (const auto& [k, v] : part.as_dict()) {
        if (!k.is_string()) fail("BUILD attribute name is a " + kind_of(k) + ", not a str");
        d.attributes.as_dict().set(k, v);
      }
    }
  }

  // ---- containers
  // Before an opcode changes the container `target`: refuses a container the
  // persistent loader returned, and has the arena hold a loose dict from now on.
  void before_change(const Value& target, uint8_t op) {
    if (!foreign_.empty() && foreign_.count(target.container_id()))
      fail(std::string(op_name(op)) + " onto a value returned by the persistent loader");
    if (target.is_dict() && DecoderMarks::of_dict(target) == 0) hold(target);
  }

  void append(Value& target, std::span<Value> items, uint8_t op) {
    before_change(target, op);
    List* dest = nullptr;
    if (target.is_list()) dest = &target.as_list();
    else if (target.is_object() && inspecting()) dest = &target.as_object().list_items;
    else fail(std::string(op_name(op)) + " onto a " + kind_of(target) + ", which is not a list");
    dest->insert(dest->end(), std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
  }

  void add_items(Value& target, List items) {
    before_change(target, ADDITEMS);
    if (target.kind() == Value::Kind::Set) {
      for (auto& x : items) set_add(target, std::move(x));
    } else if (target.is_object() && inspecting()) {
      for (auto& x : items) {
        check_key(x);
        target.as_object().list_items.push_back(std::move(x));
      }
    } else {
      fail("ADDITEMS onto a " + kind_of(target) + ", which is not a set");
    }
  }

  void set_item(Value& target, Value key, Value value, uint8_t op) {
    before_change(target, op);
    if (target.is_dict()) {
      check_key(key);
      try {
        target.as_dict().set(std::move(key), std::move(value));
      } catch (const TypeError& e) {
        fail(e.message());
      }
    } else if (target.is_object() && inspecting()) {
      check_key(key);
      target.as_object().dict_items.emplace_back(std::move(key), std::move(value));
    } else {
      fail(std::string(op_name(op)) + " onto a " + kind_of(target) + ", which is not a dict");
    }
  }

  void set_items(Value& target, std::span<Value> kv, uint8_t op) {
    if (kv.size() % 2 != 0) fail(std::string(op_name(op)) + " with an odd number of values after MARK");
    if (kv.empty()) {  // still needs a dict there, as Python does
      before_change(target, op);
      if (!target.is_dict() && !(target.is_object() && inspecting()))
        fail(std::string(op_name(op)) + " onto a " + kind_of(target) + ", which is not a dict");
    }
    for (size_t i = 0; i < kv.size(); i += 2) set_item(target, std::move(kv[i]), std::move(kv[i + 1]), op);
  }

  // ---- persistent ids
  Value persistent(const Value& pid) {
    event(Event::Kind::persid, "", "", true);
    if (!opts_.persistent_load) fail("persistent id found but no storage loader");
    Value v;
    try {
      v = opts_.persistent_load(pid, op_offset_);
    } catch (const TypeError& e) {
      throw FormatError(e.message(), e.context().offset ? e.context() : where());
    }
    if (v.container_id() != nullptr && foreign_.insert(v.container_id()).second) foreign_values_.push_back(v);
    return v;
  }

  // ---- the loop
  Value loop() {
    while (true) {
      op_offset_ = pos_;
      if (pos_ >= data_.size()) fail("pickle is truncated: no STOP opcode");
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      switch (op) {
        // -- framing
        case PROTO: {
          const uint8_t v = u8("PROTO");
          if (v > 5) fail("unsupported pickle protocol " + std::to_string(v) + " (ckpt reads protocols 0 to 5)");
          break;
        }
        case FRAME: need(uint_le(8, "FRAME"), "FRAME"); break;  // a hint: the frame's opcodes follow
        case STOP: {
          if (!marks_.empty()) fail("STOP with a MARK still open");
          if (stack_.size() != 1)
            fail("STOP with " + std::to_string(stack_.size()) + " values on the stack, expected 1");
          return pop(op);
        }

        // -- stack manipulation
        case MARK:
          if (stack_.size() + marks_.size() >= opts_.limits.max_stack)
            throw LimitError("pickle stack passes " + std::to_string(opts_.limits.max_stack) + " entries", where());
          marks_.push_back(stack_.size());
          break;
        case POP:
          if (stack_.size() > base()) stack_.pop_back();
          else if (!marks_.empty()) marks_.pop_back();  // POP of a mark, as CPython allows
          else underflow(op);
          break;
        case POP_MARK: (void)pop_mark(op); break;
        case DUP: push(top(op)); break;

        // -- memo
        case PUT: memo_put(memo_index(line("PUT"), "PUT"), op); break;
        case BINPUT: memo_put(u8("BINPUT"), op); break;
        case LONG_BINPUT: memo_put(uint_le(4, "LONG_BINPUT"), op); break;
        case MEMOIZE: memo_put(memo_count_, op); break;
        case GET: memo_get(memo_index(line("GET"), "GET")); break;
        case BINGET: memo_get(u8("BINGET")); break;
        case LONG_BINGET: memo_get(uint_le(4, "LONG_BINGET")); break;

        // -- constants and numbers
        case NONE: push(Value()); break;
        case NEWTRUE: push(Value(true)); break;
        case NEWFALSE: push(Value(false)); break;
        case INT: {
          std::string_view s = line("INT");
          if (s == "01") push(Value(true));
          else if (s == "00") push(Value(false));
          else push(parse_int(s, "INT"));
          break;
        }
        case LONG: {
          std::string_view s = line("LONG");
          if (!s.empty() && s.back() == 'L') s.remove_suffix(1);
          push(parse_int(s, "LONG"));
          break;
        }
        case BININT: push(Value(static_cast<int64_t>(static_cast<int32_t>(uint_le(4, "BININT"))))); break;
        case BININT1: push(Value(static_cast<int64_t>(u8("BININT1")))); break;
        case BININT2: push(Value(static_cast<int64_t>(uint_le(2, "BININT2")))); break;
        case LONG1: {
          const uint8_t n = u8("LONG1");
          push(int_from_le(take(n, "LONG1")));
          break;
        }
        case LONG4: {
          const auto n = static_cast<int32_t>(uint_le(4, "LONG4"));
          if (n < 0) fail("LONG4 with a negative length");
          push(int_from_le(take(static_cast<uint64_t>(n), "LONG4")));
          break;
        }
        case FLOAT: push(Value(parse_float(line("FLOAT")))); break;
        case BINFLOAT: {
          need(8, "BINFLOAT");
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(data_[pos_ + i]);  // big-endian
          pos_ += 8;
          double d;
          std::memcpy(&d, &bits, sizeof d);
          push(Value(d));
          break;
        }

        // -- strings and bytes
        case STRING: push(py2_string(parse_string_literal(line("STRING")))); break;
        case BINSTRING: {
          const auto n = static_cast<int32_t>(uint_le(4, "BINSTRING"));
          if (n < 0) fail("BINSTRING with a negative length");
          push(py2_string(take(static_cast<uint64_t>(n), "BINSTRING")));
          break;
        }
        case SHORT_BINSTRING: push(py2_string(take(u8("SHORT_BINSTRING"), "SHORT_BINSTRING"))); break;
        case UNICODE: push(Value(parse_raw_unicode(line("UNICODE")))); break;
        case SHORT_BINUNICODE:
          push(unicode(take(u8("SHORT_BINUNICODE"), "SHORT_BINUNICODE"), "SHORT_BINUNICODE"));
          break;
        case BINUNICODE: push(unicode(take(uint_le(4, "BINUNICODE"), "BINUNICODE"), "BINUNICODE")); break;
        case BINUNICODE8: push(unicode(take(uint_le(8, "BINUNICODE8"), "BINUNICODE8"), "BINUNICODE8")); break;
        case SHORT_BINBYTES: push(Value::bytes(std::string(take(u8("SHORT_BINBYTES"), "SHORT_BINBYTES")))); break;
        case BINBYTES: push(Value::bytes(std::string(take(uint_le(4, "BINBYTES"), "BINBYTES")))); break;
        case BINBYTES8: push(Value::bytes(std::string(take(uint_le(8, "BINBYTES8"), "BINBYTES8")))); break;
        case BYTEARRAY8: push(Value::bytearray(std::string(take(uint_le(8, "BYTEARRAY8"), "BYTEARRAY8")))); break;
        case NEXT_BUFFER:
        case READONLY_BUFFER:
          fail(std::string(op_name(op)) +
               ": the pickle refers to out-of-band buffers (protocol 5), which a file cannot carry");

        // -- containers
        case EMPTY_LIST: push(track(Value::list())); break;
        case EMPTY_TUPLE:
          // Python's () is one object: every EMPTY_TUPLE pushes the same
          // tuple (a state dict has one per tensor, the arguments of its
          // hooks' OrderedDict()), made once. Each is charged as before.
          if (empty_tuple_.is_none()) empty_tuple_ = new_tuple({});
          else charge(kSequenceCost);
          push(empty_tuple_);
          break;
        case EMPTY_DICT: push(track(Value::dict())); break;
        case EMPTY_SET: push(track(Value::set())); break;
        case LIST: push(track(Value::list(pop_mark(op)))); break;
        case TUPLE: push(new_tuple(pop_mark(op))); break;
        case TUPLE1: {
          List t(1);
          t[0] = pop(op);
          push(new_tuple(std::move(t)));
          break;
        }
        case TUPLE2: {
          List t(2);
          t[1] = pop(op);
          t[0] = pop(op);
          push(new_tuple(std::move(t)));
          break;
        }
        case TUPLE3: {
          List t(3);
          t[2] = pop(op);
          t[1] = pop(op);
          t[0] = pop(op);
          push(new_tuple(std::move(t)));
          break;
        }
        case DICT: {
          List kv = pop_mark(op);
          Value d = track(Value::dict());
          set_items(d, kv, op);
          push(std::move(d));
          break;
        }
        case FROZENSET: {
          List items = pop_mark(op);
          Value s = track(Value::set());
          for (auto& x : items) set_add(s, std::move(x));
          push(std::move(s));
          break;
        }
        case APPEND: {
          if (stack_.size() <= base()) underflow(op);
          if (stack_.size() - 1 <= base()) {  // the value but no list: as pop() then top() report it
            stack_.pop_back();
            underflow(op);
          }
          append(stack_[stack_.size() - 2], {&stack_.back(), 1}, op);
          stack_.pop_back();
          break;
        }
        case APPENDS: {
          const size_t m = pop_mark_in_place(op);
          append(stack_[m - 1], std::span<Value>(stack_).subspan(m), op);
          stack_.resize(m);
          break;
        }
        case ADDITEMS: {
          List items = pop_mark(op);
          add_items(top(op), std::move(items));
          break;
        }
        case SETITEM: {
          Value v = pop(op);
          Value k = pop(op);
          set_item(top(op), std::move(k), std::move(v), op);
          break;
        }
        case SETITEMS: {
          const size_t m = pop_mark_in_place(op);
          set_items(stack_[m - 1], std::span<Value>(stack_).subspan(m), op);
          stack_.resize(m);
          break;
        }

        // -- globals and calls
        case GLOBAL: {
          std::string module = name_line("GLOBAL");
          std::string name = name_line("GLOBAL");
          push(resolve_global(std::move(module), std::move(name)));
          break;
        }
        case STACK_GLOBAL: {
          Value name = pop(op);
          Value module = pop(op);
          if (!module.is_string() || !name.is_string()) {
            // An operand built by a call (an inert Object here) may be any str
            // when Python runs the call, so Python could import anything: the
            // scanner reports an unknown global. Any other non-str operand
            // (bytes, int, a class) makes CPython raise "STACK_GLOBAL requires
            // str" before importing anything: an error.
            if (inspecting() && (module.is_object() || name.is_object()) && (module.is_string() || module.is_object()) &&
                (name.is_string() || name.is_object())) {
              std::string m = module.is_string() ? module.as_string() : "<built by a call>";
              std::string n = name.is_string() ? name.as_string() : "<built by a call>";
              event(Event::Kind::global, m, n, false);
              push(Value(Global{std::move(m), std::move(n)}));
              break;
            }
            fail("STACK_GLOBAL needs two strings, got a " + kind_of(module) + " and a " + kind_of(name));
          }
          if (module.as_string().empty() || name.as_string().empty())
            fail("STACK_GLOBAL names an empty module or attribute");
          push(resolve_global(module.as_string(), name.as_string()));
          break;
        }
        case INST: {
          std::string module = name_line("INST");
          std::string name = name_line("INST");
          Value cls = resolve_global(std::move(module), std::move(name));
          Value args = new_tuple(pop_mark(op));
          push(call_op(op, Event::Kind::inst, cls, std::move(args)));
          break;
        }
        case OBJ: {
          List items = pop_mark(op);
          if (items.empty()) fail("OBJ needs a class after MARK, but there is nothing");
          Value cls = std::move(items.front());
          items.erase(items.begin());
          push(call_op(op, Event::Kind::obj, cls, new_tuple(std::move(items))));
          break;
        }
        case REDUCE: {
          Value args = pop(op);
          Value fn = pop(op);
          push(call_op(op, Event::Kind::reduce, fn, std::move(args)));
          break;
        }
        case NEWOBJ: {
          Value args = pop(op);
          Value cls = pop(op);
          push(call_op(op, Event::Kind::newobj, cls, std::move(args)));
          break;
        }
        case NEWOBJ_EX: {
          Value kwargs = pop(op);
          Value args = pop(op);
          Value cls = pop(op);
          if (!kwargs.is_dict()) fail("NEWOBJ_EX keyword arguments are a " + kind_of(kwargs) + ", not a dict");
          push(call_op(op, Event::Kind::newobj_ex, cls, std::move(args), std::move(kwargs)));
          break;
        }
        case BUILD: {
          Value state = pop(op);
          build(top(op), state);
          break;
        }
        case EXT1:
        case EXT2:
        case EXT4: {
          const uint64_t code = op == EXT1 ? u8("EXT1") : op == EXT2 ? uint_le(2, "EXT2") : uint_le(4, "EXT4");
          if (code == 0 || (op == EXT4 && static_cast<int32_t>(code) <= 0))
            fail(std::string(op_name(op)) + " specifies code <= 0");
          const std::string name = std::to_string(code);
          event(Event::Kind::ext, "copyreg.ext", name, false);
          if (!inspecting())
            unsafe("extension registry codes are not allowed when loading weights (" + std::string(op_name(op)) +
                   " " + name + ")");
          push(Value(Global{"copyreg.ext", name}));
          break;
        }

        // -- persistent ids
        case PERSID: {
          std::string_view id = line("PERSID");
          if (!std::all_of(id.begin(), id.end(), [](char c) { return static_cast<uint8_t>(c) < 0x80; }))
            fail("PERSID argument " + quote(id) + " is not ASCII");
          push(persistent(Value(std::string(id))));
          break;
        }
        case BINPERSID: {
          Value pid = pop(op);
          push(persistent(pid));
          break;
        }

        default: fail("unknown pickle opcode " + hex_byte(op));
      }
    }
  }

  // ---- the result
  // One iterative DFS: the result must be acyclic and no deeper than
  // max_depth. Heights are remembered, so a subtree shared by several parents
  // is walked once and still counted at its deepest position. Containers the
  // DFS does not reach are garbage: emptied here, so that freeing them never
  // recurses (they may be cyclic or arbitrarily deep).
  void check_result(const Value& root) {
    enum : uint8_t { kOpen, kDone };
    struct Info {
      uint8_t state;
      size_t height;  // containers on the longest downward path, itself included
    };
    struct Frame {
      const Value* v;
      size_t depth;  // containers from the root to v, both included
      bool exit;
    };
    const size_t max_depth = opts_.limits.max_depth;
    std::unordered_map<const void*, Info> info;
    info.reserve(arena_.size());
    std::vector<Frame> todo;
    if (root.container_id() != nullptr) todo.push_back({&root, 1, false});
    while (!todo.empty()) {
      const Frame f = todo.back();
      todo.pop_back();
      const void* id = f.v->container_id();
      if (f.exit) {
        size_t h = 0;
        for_each_child(*f.v, [&](const Value& c) {
          if (const void* cid = c.container_id()) {
            auto ci = info.find(cid);
            if (ci != info.end()) h = std::max(h, ci->second.height);
          }
        });
        info[id] = Info{kDone, h + 1};
        continue;
      }
      auto [it, fresh] = info.try_emplace(id, Info{kOpen, 0});
      if (!fresh) {
        if (it->second.state == kOpen)
          fail("recursive structure: a container holds itself (directly or through others), which ckpt does not load");
        if (f.depth - 1 + it->second.height > max_depth) too_deep();
        continue;
      }
      if (f.depth > max_depth) too_deep();
      todo.push_back({f.v, f.depth, true});
      for_each_child(*f.v, [&](const Value& c) {
        if (c.container_id() != nullptr) todo.push_back({&c, f.depth + 1, false});
      });
    }
    for (const Value& v : arena_)
      if (!info.count(v.container_id())) empty_container(v);
    arena_.clear();
  }

  // Empties every container the VM created, so that destroying a deep or
  // cyclic structure never recurses and never leaks. Never throws.
  void dismantle() noexcept {
    stack_.clear();
    marks_.clear();
    memo_dense_.clear();
    memo_sparse_.clear();
    memo_count_ = 0;
    plan_.reset();
    memo_stored_.clear();
    set_index_.clear();
    empty_tuple_ = Value();
    for (const Value& v : arena_) empty_container(v);
    arena_.clear();
  }
};

}  // namespace

Value unpickle(std::span<const std::byte> data, const Options& options, size_t* consumed) {
  Machine m(data, options);
  return m.run(consumed);
}

}  // namespace ckpt::pickle
