// ckpt::scan_file and friends: every pickle of a file through the inspecting
// unpickler, each global and call classified against three lists.
#include "ckpt/scan.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <map>
#include <set>

#include "formats/detect.hpp"
#include "io/file.hpp"
#include "ckpt/error.hpp"
#include "container/zip.hpp"
#include "formats/onnx.hpp"
#include "formats/safetensors.hpp"
#include "formats/torch_legacy.hpp"
#include "formats/torch_zip.hpp"
#include "pickle/torch_globals.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt {
namespace {

// A hostile pickle can name a global every five bytes; past this many
// findings per file the rest are counted, not stored (the verdict still sees
// them).
constexpr size_t kMaxFindings = 100000;
// Pickles nested as bytes handed to pickle.loads & co. are decoded in turn,
// this many levels deep and at most this many per file (each distinct bytes
// value once, so the work stays proportional to the file).
constexpr int kMaxNestedDepth = 4;
constexpr size_t kMaxNestedPickles = 256;

// ---------------------------------------------------------------- the lists

bool in_module(std::string_view module, std::string_view prefix) {
  return module == prefix || (module.size() > prefix.size() && module.substr(0, prefix.size()) == prefix &&
                              module[prefix.size()] == '.');
}

bool capitalized(std::string_view name) { return !name.empty() && name[0] >= 'A' && name[0] <= 'Z'; }

// Modules whose every attribute is dangerous: they run programs, open files
// or sockets, load code or nested pickles, or reach the interpreter's guts.
constexpr std::string_view kDeniedModules[] = {
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "runpy", "importlib",
    "imp", "zipimport", "pkgutil", "webbrowser", "socket", "_socket", "socketserver", "ssl", "select",
    "selectors", "pty", "tty", "shutil", "sys", "code", "codeop", "ctypes", "_ctypes", "cffi", "pickle",
    "_pickle", "cPickle", "pickletools", "dill", "cloudpickle", "joblib", "shelve", "marshal", "types",
    "requests", "urllib", "urllib2", "urllib3", "http", "httplib", "ftplib", "smtplib", "telnetlib",
    "xmlrpc", "asyncio", "multiprocessing", "threading", "_thread", "concurrent", "signal", "pdb", "bdb",
    "tempfile", "io", "_io", "fileinput", "glob", "commands", "popen2", "platform", "site", "ensurepip",
    "venv", "distutils", "setuptools", "pip", "trace", "timeit", "profile", "cProfile", "doctest",
    "idlelib", "tkinter", "turtle", "sqlite3", "dbm", "gc", "inspect", "ast", "_winapi", "msvcrt",
    "winreg", "_winreg", "operator", "_operator", "functools", "_functools", "builtins.eval",
    "torch._C", "torch.ops", "torch.hub", "torch.fx", "torch.package", "torch.jit._script",
    "torch.utils.cpp_extension", "torch._dynamo", "torch._inductor", "torch.distributed.rpc",
    "torch.multiprocessing", "torch.cuda._lazy_init", "numpy.testing", "numpy.f2py", "numpy.distutils",
    "numpy.lib.npyio", "numpy.ctypeslib", "keras", "tensorflow", "lzma", "bz2", "gzip", "zipfile",
    "tarfile", "logging.config", "linecache", "warnings", "atexit", "resource", "mmap", "fcntl",
};

// Single attributes that are dangerous in otherwise unlisted modules.
struct Qualified {
  std::string_view module, name;
};
constexpr Qualified kDeniedNames[] = {
    {"builtins", "eval"}, {"builtins", "exec"}, {"builtins", "execfile"}, {"builtins", "compile"},
    {"builtins", "getattr"}, {"builtins", "setattr"}, {"builtins", "delattr"}, {"builtins", "__import__"},
    {"builtins", "open"}, {"builtins", "breakpoint"}, {"builtins", "input"}, {"builtins", "globals"},
    {"builtins", "locals"}, {"builtins", "vars"}, {"builtins", "exit"}, {"builtins", "quit"},
    {"builtins", "help"}, {"builtins", "memoryview"}, {"builtins", "type"}, {"builtins", "super"},
    {"builtins", "classmethod"}, {"builtins", "staticmethod"}, {"builtins", "property"},
    {"builtins", "print"}, {"builtins", "map"}, {"builtins", "filter"}, {"builtins", "apply"},
    {"builtins", "reload"}, {"builtins", "file"}, {"builtins", "__builtins__"},
    {"torch", "load"}, {"torch.serialization", "load"}, {"torch.serialization", "_load"},
    {"torch.storage", "_load_from_bytes"}, {"torch.jit", "load"}, {"torch", "compile"},
    {"numpy", "load"}, {"numpy", "loadtxt"}, {"numpy", "fromfile"}, {"numpy", "save"},
    {"numpy", "tofile"}, {"collections", "namedtuple"}, {"copyreg", "add_extension"},
    {"copyreg", "_extension_registry"}, {"copyreg", "dispatch_table"},
};

// Known inert data classes and reconstructors: not on the weights_only
// allow-list, but they only build data.
constexpr Qualified kKnownNames[] = {
    {"builtins", "set"}, {"builtins", "frozenset"}, {"builtins", "bytearray"}, {"builtins", "bytes"},
    {"builtins", "str"}, {"builtins", "int"}, {"builtins", "float"}, {"builtins", "complex"},
    {"builtins", "bool"}, {"builtins", "list"}, {"builtins", "tuple"}, {"builtins", "dict"},
    {"builtins", "slice"}, {"builtins", "range"}, {"builtins", "object"}, {"builtins", "Ellipsis"},
    {"builtins", "NotImplemented"}, {"builtins", "NoneType"},
    {"collections", "OrderedDict"}, {"collections", "defaultdict"}, {"collections", "Counter"},
    {"collections", "deque"}, {"argparse", "Namespace"}, {"copyreg", "_reconstructor"},
    {"copyreg", "__newobj__"}, {"copyreg", "__newobj_ex__"},
    {"numpy", "ndarray"}, {"numpy", "dtype"}, {"numpy.core.multiarray", "_reconstruct"},
    {"numpy._core.multiarray", "_reconstruct"}, {"numpy.core.multiarray", "scalar"},
    {"numpy._core.multiarray", "scalar"}, {"numpy.ma.core", "_mareconstruct"},
    {"numpy.random._pickle", "__randomstate_ctor"}, {"numpy.random._pickle", "__bit_generator_ctor"},
    {"numpy.random._pickle", "__generator_ctor"},
    {"datetime", "datetime"}, {"datetime", "date"}, {"datetime", "time"}, {"datetime", "timedelta"},
    {"datetime", "timezone"}, {"decimal", "Decimal"}, {"fractions", "Fraction"}, {"uuid", "UUID"},
    {"pathlib", "Path"}, {"pathlib", "PosixPath"}, {"pathlib", "WindowsPath"}, {"pathlib", "PurePath"},
    {"pathlib", "PurePosixPath"}, {"pathlib", "PureWindowsPath"}, {"enum", "Enum"},
    {"torch._tensor", "_rebuild_from_type_v2"}, {"torch.serialization", "_get_layout"},
    {"torch.nn.parameter", "Parameter"},
};

// Modules whose classes (capitalised names) are known inert data classes:
// TorchScript module classes, training-framework and config objects. Their
// functions are not listed (unknown).
constexpr std::string_view kKnownClassModules[] = {
    "numpy.dtypes", "torch.nn", "torch.optim", "torch.utils.data", "torch.ao", "torch.quantization",
    "torch.cuda.amp", "torch.amp", "torch.distributions", "pytorch_lightning", "lightning",
    "lightning_fabric", "transformers", "omegaconf", "hydra", "accelerate", "tokenizers", "timm",
    "torchvision", "torchaudio", "torchtext", "peft", "diffusers",
};

bool is_rebuild_helper(std::string_view module, std::string_view name) {
  // torch._utils._rebuild_* and torch.jit._pickle.build_* / restore_* rebuild data only.
  return (module == "torch._utils" && name.substr(0, 9) == "_rebuild_") ||
         (module == "torch.jit._pickle" && !name.empty() && name[0] != '_');
}

// Calls the unpickler reports on values that are not globals (REDUCE on a
// str, a list...): Python would raise before running anything.
bool is_plain_kind(std::string_view module) { return module.empty(); }

}  // namespace

std::string_view scan_category_name(ScanCategory c) noexcept {
  switch (c) {
    case ScanCategory::allowed: return "allowed";
    case ScanCategory::known: return "known";
    case ScanCategory::dangerous: return "dangerous";
    case ScanCategory::unknown: break;
  }
  return "unknown";
}

std::string_view scan_verdict_name(ScanVerdict v) noexcept {
  switch (v) {
    case ScanVerdict::safe: return "safe";
    case ScanVerdict::unsafe_but_known: return "unsafe-but-known";
    case ScanVerdict::dangerous: return "dangerous";
    case ScanVerdict::error: break;
  }
  return "error";
}

ScanCategory classify_global(std::string_view module_in, std::string_view name_in) {
  std::string module(module_in), name(name_in);
  pickle::map_global_name(module, name);  // __builtin__ -> builtins, copy_reg -> copyreg, ...
  if (module == "__builtin__" || module == "exceptions") module = "builtins";
  if (module == "copy_reg") module = "copyreg";
  for (auto m : kDeniedModules)
    if (in_module(module, m)) return ScanCategory::dangerous;
  for (const auto& q : kDeniedNames)
    if (q.module == module && q.name == name) return ScanCategory::dangerous;
  // A dotted attribute (STACK_GLOBAL 'builtins', 'eval.__call__') is looked up
  // attribute by attribute by Python: classify its first part.
  if (size_t dot = name.find('.'); dot != std::string::npos) {
    ScanCategory first = classify_global(module, name.substr(0, dot));
    if (first == ScanCategory::dangerous) return first;
    return ScanCategory::unknown;
  }
  if (pickle::is_allowed_global(module, name)) return ScanCategory::allowed;
  for (const auto& q : kKnownNames)
    if (q.module == module && q.name == name) return ScanCategory::known;
  if (is_rebuild_helper(module, name)) return ScanCategory::known;
  if (in_module(module, "__torch__")) return ScanCategory::known;
  for (auto m : kKnownClassModules)
    if (in_module(module, m) && capitalized(name)) return ScanCategory::known;
  return ScanCategory::unknown;
}

namespace {

// ---------------------------------------------------------------- collecting events

const char* op_name(pickle::Event::Kind k) {
  using K = pickle::Event::Kind;
  switch (k) {
    case K::global: return "global";
    case K::reduce: return "reduce";
    case K::build: return "build";
    case K::newobj: return "newobj";
    case K::newobj_ex: return "newobj_ex";
    case K::inst: return "inst";
    case K::obj: return "obj";
    case K::persid: return "persid";
    case K::ext: return "ext";
  }
  return "?";
}

bool identifier_like(std::string_view s) {
  // A dotted Python identifier (ASCII): what a real protocol 0 GLOBAL names.
  if (s.empty()) return false;
  bool start = true;
  for (char c : s) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (c == '.') {
      if (start) return false;
      start = true;
    } else if (alpha || (digit && !start)) {
      start = false;
    } else {
      return false;
    }
  }
  return !start;
}

class Collector : public pickle::Observer {
 public:
  Collector(ScanReport& report, const ScanOptions& options) : report_(report), options_(options) {}

  void on_event(const pickle::Event& e) override {
    if (e.kind == pickle::Event::Kind::persid) return;  // storage references: data, not code
    ScanFinding f;
    f.record = e.record;
    f.offset = e.offset;
    f.op = op_name(e.kind);
    f.module = e.module;
    f.name = e.name;
    if (e.kind == pickle::Event::Kind::ext) f.category = ScanCategory::unknown;
    else if (e.allowed) f.category = ScanCategory::allowed;
    else if (is_plain_kind(e.module)) f.category = ScanCategory::unknown;
    else f.category = classify_global(e.module, e.name);
    if (tentative_) {
      pending_.push_back(std::move(f));
      return;
    }
    commit(std::move(f));
  }

  // Tentative mode: a record that may or may not be a pickle (it starts with
  // a protocol 0/1 opcode byte, as text and tensor data may). Its findings
  // are kept only if it decodes or names a real-looking global.
  void begin_tentative() {
    tentative_ = true;
    pending_.clear();
  }
  bool end_tentative(bool decoded) {
    tentative_ = false;
    bool keep = decoded;
    for (const auto& f : pending_)
      keep = keep || (f.op != "build" && identifier_like(f.module) && identifier_like(f.name));
    if (keep)
      for (auto& f : pending_) commit(std::move(f));
    pending_.clear();
    return keep;
  }

  bool any_dangerous = false;
  bool any_known = false;

 private:
  void commit(ScanFinding f) {
    if (f.category == ScanCategory::dangerous || f.category == ScanCategory::unknown) any_dangerous = true;
    if (f.category == ScanCategory::known) any_known = true;
    if (f.category == ScanCategory::allowed && !options_.include_allowed) return;
    if (report_.findings.size() >= kMaxFindings) {
      ++report_.findings_omitted;
      return;
    }
    report_.findings.push_back(std::move(f));
  }

  ScanReport& report_;
  const ScanOptions& options_;
  bool tentative_ = false;
  std::vector<ScanFinding> pending_;
};

// ---------------------------------------------------------------- what looks like a pickle

// Opcodes of protocols 0 and 1 (every opcode a pickle without PROTO can start with).
constexpr std::string_view kProto01Opcodes = "(.012FGIJKLMNPQRSTUVXabcdeghijlopqrstu}])";

enum class PickleLike { no, proto, maybe };

PickleLike looks_like_pickle(std::span<const std::byte> b) {
  if (b.empty()) return PickleLike::no;
  const auto c0 = static_cast<unsigned char>(b[0]);
  if (c0 == 0x80) return b.size() >= 2 && static_cast<unsigned char>(b[1]) <= 5 ? PickleLike::proto : PickleLike::no;
  return kProto01Opcodes.find(static_cast<char>(c0)) != std::string_view::npos ? PickleLike::maybe : PickleLike::no;
}

bool ends_with_icase(std::string_view s, std::string_view suffix) {
  if (s.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); ++i) {
    char c = s[s.size() - suffix.size() + i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != suffix[i]) return false;
  }
  return true;
}

std::string error_text(const std::exception& e) { return e.what(); }

// Functions that decode their bytes argument as a pickle.
bool is_pickle_loader(const Object& o) {
  static constexpr std::string_view kModules[] = {"pickle", "_pickle", "cPickle", "dill", "dill._dill", "cloudpickle"};
  if (o.name != "loads" && o.name != "_loads") return false;
  return std::find(std::begin(kModules), std::end(kModules), o.module) != std::end(kModules);
}

// The bytes arguments of pickle.loads calls inside a decoded tree, each
// distinct bytes value once. Iterative, and each container is visited once.
std::vector<const std::string*> nested_pickles(const Value& root) {
  std::vector<const std::string*> out;
  std::set<const void*> seen;
  std::vector<const Value*> todo{&root};
  while (!todo.empty()) {
    const Value* v = todo.back();
    todo.pop_back();
    if (const void* id = v->container_id(); id == nullptr || !seen.insert(id).second) continue;
    if (v->is_list() || v->is_tuple()) {
      for (const Value& c : v->items()) todo.push_back(&c);
    } else if (v->is_dict()) {
      const Dict& d = v->as_dict();
      for (const auto& [k, c] : d) {
        todo.push_back(&k);
        todo.push_back(&c);
      }
      todo.push_back(&d.attributes);
    } else if (v->is_object()) {
      const Object& o = v->as_object();
      if (is_pickle_loader(o) && o.args.is_tuple() && !o.args.as_tuple().empty() && o.args.as_tuple()[0].is_bytes()) {
        const std::string* b = &o.args.as_tuple()[0].as_bytes();
        if (std::find(out.begin(), out.end(), b) == out.end()) out.push_back(b);
      }
      for (const Value* c : {&o.args, &o.kwargs, &o.state}) todo.push_back(c);
      for (const Value& c : o.list_items) todo.push_back(&c);
      for (const auto& [k, c] : o.dict_items) {
        todo.push_back(&k);
        todo.push_back(&c);
      }
    }
  }
  return out;
}

class Scanner {
 public:
  Scanner(std::shared_ptr<io::RandomAccessFile> file, ScanReport& report, const ScanOptions& options)
      : file_(std::move(file)), report_(report), collector_(report, options) {}

  void run() {
    try {
      scan();
    } catch (const std::bad_alloc&) {
      add_error(ckpt::Error("out of memory while scanning", ErrorContext{file_->name()}));
    } catch (const std::exception& e) {
      add_error(e);
    }
    finish();
  }

 private:
  void add_error(const std::exception& e) {
    std::string text = error_text(e);
    if (text.rfind(file_->name() + ":", 0) != 0) text = file_->name() + ": " + text;
    report_.errors.push_back(std::move(text));
  }
  void add_pickle(const std::string& record) {
    if (std::find(report_.pickles.begin(), report_.pickles.end(), record) == report_.pickles.end())
      report_.pickles.push_back(record);
  }

  // Runs `fn`, turning its errors into report errors. Returns whether it succeeded.
  template <class F>
  bool guarded(F&& fn) {
    try {
      fn();
      return true;
    } catch (const std::bad_alloc&) {
      add_error(ckpt::Error("out of memory while scanning", ErrorContext{file_->name()}));
    } catch (const std::exception& e) {
      add_error(e);
    }
    return false;
  }

  pickle::Options generic_options(const std::string& record) {
    pickle::Options p;
    p.policy = pickle::GlobalPolicy::inspect;
    p.observer = &collector_;
    p.file = file_->name();
    p.record = record;
    // No storages here: a persistent id stays what it is (inert data).
    p.persistent_load = [](const Value& pid, uint64_t) { return pid; };
    return p;
  }

  // One record (or the whole file) that is a pickle or several back to back.
  // `single`: only the first pickle counts (what one pickle.load reads);
  // `tentative`: every pickle is kept only if it decodes or names a global.
  void scan_pickles(std::span<const std::byte> bytes, const std::string& record, PickleLike how, int depth = 0,
                    bool single = false, bool tentative = false) {
    size_t pos = 0;
    bool first = true;
    while (pos < bytes.size()) {
      auto rest = bytes.subspan(pos);
      PickleLike like = first ? how : looks_like_pickle(rest);
      if (like == PickleLike::no || (single && !first)) return;  // trailing data after the last pickle
      if (tentative) like = PickleLike::maybe;
      size_t used = 0;
      if (like == PickleLike::maybe) collector_.begin_tentative();
      std::string err;
      bool ok = false;
      Value root;
      try {
        root = pickle::unpickle(rest, generic_options(record), &used);
        ok = true;
      } catch (const std::bad_alloc&) {
        err = file_->name() + ": out of memory while scanning";
      } catch (const std::exception& e) {
        err = error_text(e);
      }
      bool keep = true;
      if (like == PickleLike::maybe) keep = collector_.end_tentative(ok);
      if (!keep) return;  // not a pickle after all
      add_pickle(record);
      if (!ok) {
        if (err.rfind(file_->name() + ":", 0) != 0) err = file_->name() + ": " + err;
        report_.errors.push_back(std::move(err));
        return;
      }
      scan_nested(root, record, depth);
      if (used == 0) return;
      pos += used;
      first = false;
    }
  }

  // Decodes the bytes given to pickle.loads & co. in a decoded tree.
  void scan_nested(const Value& root, const std::string& record, int depth) {
    if (depth >= kMaxNestedDepth) return;
    for (const std::string* b : nested_pickles(root)) {
      if (nested_count_ >= kMaxNestedPickles) return;
      ++nested_count_;
      auto span = std::as_bytes(std::span<const char>(b->data(), b->size()));
      PickleLike like = looks_like_pickle(span);
      if (like == PickleLike::no) continue;
      scan_pickles(span, record.empty() ? "pickle.loads" : record + " > pickle.loads", like, depth + 1);
    }
  }

  void scan() {
    std::byte head[512];
    const size_t n = static_cast<size_t>(std::min<uint64_t>(file_->size(), sizeof head));
    file_->read_at(0, {head, n});
    std::span<const std::byte> h(head, n);
    if (n == 0) {
      report_.unrecognized = true;
      throw FormatError("file is empty; not a checkpoint", ErrorContext{file_->name()});
    }
    // The same decision load, open and ls take, in torch.load's order (see
    // formats::detect_head and docs/security.md).
    Format f = formats::detect_head(file_);
    if (f == Format::torch_zip) return scan_zip();
    report_.format = f;
    LoadOptions lo;
    lo.weights_only = false;  // inspection: unknown classes stay inert objects
    lo.mmap = file_->memory() != nullptr;
    switch (f) {
      case Format::torch_legacy:
        guarded([&] { scan_nested(formats::load_torch_legacy(file_, lo, &collector_), "object pickle", 0); });
        return;
      case Format::torch_tar: {
        guarded([&] { scan_nested(formats::load_torch_tar(file_, lo, &collector_), "pickle", 0); });
        // torch tries the tar reader only on a real file (_should_read_directly);
        // the same bytes in a BytesIO go straight to pickle.load from offset 0,
        // where the first member's name is read as a pickle.
        if (looks_like_pickle(h) != PickleLike::no) {
          auto mem = memory();
          scan_pickles({mem->memory(), mem->size()}, "torch.load legacy path", PickleLike::maybe, 0,
                       /*single=*/false, /*tentative=*/true);
        }
        return;
      }
      case Format::safetensors: {
        guarded([&] { (void)formats::read_safetensors_header(*file_); });
        // torch.load(weights_only=False) reads a non-zip, non-tar file with
        // pickle.load from offset 0 before it checks the magic number: a
        // header whose bytes also form a pickle runs that pickle.
        if (looks_like_pickle(h) != PickleLike::no) {
          auto mem = memory();
          scan_pickles({mem->memory(), mem->size()}, "torch.load legacy path", PickleLike::maybe, 0,
                       /*single=*/true, /*tentative=*/true);
        }
        return;
      }
      case Format::onnx:  // protobuf, no code: read as the loader does (external data paths checked)
        guarded([&] { (void)formats::load_onnx(file_, lo); });
        return;
      default: break;
    }
    PickleLike like = looks_like_pickle(h);
    if (like == PickleLike::no) {
      report_.unrecognized = true;
      throw FormatError("not a checkpoint format ckpt recognizes", ErrorContext{file_->name()});
    }
    report_.bare_pickle = true;
    auto mem = memory();
    const size_t errors_before = report_.errors.size();
    scan_pickles({mem->memory(), mem->size()}, "", like);
    if (report_.pickles.empty() && report_.errors.size() == errors_before) {
      report_.unrecognized = true;
      throw FormatError("not a checkpoint format ckpt recognizes (and not a pickle)", ErrorContext{file_->name()});
    }
  }

  std::shared_ptr<io::RandomAccessFile> memory() {
    return file_->memory() ? file_ : io::map_file(file_->name());
  }

  // The records torch unpickles: "<prefix>/data.pkl" (torch.load) and, for
  // TorchScript, "<prefix>/constants.pkl" (torch.jit.load), each located
  // ignoring letter case, so every record that matches up to case is
  // scanned (torch may take any). The storage records their persistent ids
  // name ("<prefix>/data/<key>", "<prefix>/constants/<key>") are tensor
  // bytes torch never unpickles and are not decoded, whatever their first
  // bytes (issue #19: quantized storages). Every other record is looked at
  // as before: a pickle hidden where torch does not look is still reported.
  void scan_zip() {
    report_.format = Format::torch_zip;
    std::unique_ptr<zip::ZipReader> z;
    if (!guarded([&] { z = std::make_unique<zip::ZipReader>(memory()); })) return;
    formats::TorchZipInfo info;
    if (guarded([&] { info = formats::inspect_torch_zip(*z); }) && info.torchscript)
      report_.format = Format::torchscript;
    std::set<const zip::Entry*> torch_pickles, data_records;
    std::string prefix = info.prefix;
    if (!z->entries().empty()) {
      const std::string& first = z->entries().front().name;
      if (size_t slash = first.find('/'); slash != std::string::npos) {
        prefix = first.substr(0, slash);
        for (const char* rec : {"/data.pkl", "/constants.pkl"})
          for (const zip::Entry* e : z->find_all_icase(prefix + rec)) torch_pickles.insert(e);
      }
    }
    if (info.prefix != prefix) info = formats::TorchZipInfo{prefix, 0, "little", false};  // inspect failed
    LoadOptions lo;
    lo.weights_only = false;  // inspection: unknown classes stay inert objects
    lo.mmap = true;
    std::vector<const zip::Entry*> storages;
    for (const zip::Entry& e : z->entries()) {
      if (!torch_pickles.count(&e)) continue;
      add_pickle(e.name);
      const bool constants = e.name.size() >= 13 && ends_with_icase(e.name, "constants.pkl");
      guarded([&] {
        // Storages resolved as torch resolves them; the records they name are data.
        scan_nested(formats::unpickle_record(*z, info, constants ? "constants.pkl" : "data.pkl",
                                             constants ? "constants" : "data", lo, &collector_, {}, &e, &storages),
                    e.name, 0);
      });
    }
    data_records.insert(storages.begin(), storages.end());
    for (const zip::Entry& e : z->entries()) {
      if (torch_pickles.count(&e) || data_records.count(&e)) continue;
      guarded([&] { scan_entry(*z, e); });
    }
  }

  void scan_entry(const zip::ZipReader& z, const zip::Entry& e) {
    if (e.uncompressed_size == 0) return;
    const bool pkl_name = ends_with_icase(e.name, ".pkl");
    if (e.method == 0 && !pkl_name) {  // peek before reading a (possibly large) stored record
      std::byte peek[2];
      const size_t k = static_cast<size_t>(std::min<uint64_t>(e.uncompressed_size, 2));
      z.file().read_at(z.data_offset(e), {peek, k});
      if (looks_like_pickle({peek, k}) == PickleLike::no) return;
    }
    Storage bytes = e.method == 0 && z.file().memory() != nullptr ? z.view(e) : z.read(e);
    PickleLike like = looks_like_pickle(bytes.bytes());
    if (pkl_name && like != PickleLike::no) like = PickleLike::proto;  // named a pickle: report its errors
    if (pkl_name && like == PickleLike::no) {
      add_pickle(e.name);
      throw FormatError("record is named like a pickle but does not start with a pickle opcode",
                        ErrorContext{file_->name(), e.name, 0});
    }
    if (like == PickleLike::no) return;
    scan_pickles(bytes.bytes(), e.name, like);
  }

  void finish() {
    if (collector_.any_dangerous) report_.verdict = ScanVerdict::dangerous;
    else if (!report_.errors.empty()) report_.verdict = ScanVerdict::error;
    else if (collector_.any_known) report_.verdict = ScanVerdict::unsafe_but_known;
    else report_.verdict = ScanVerdict::safe;
  }

  std::shared_ptr<io::RandomAccessFile> file_;
  ScanReport& report_;
  Collector collector_;
  size_t nested_count_ = 0;
};

ScanReport scan_opened(const std::string& path, const std::function<std::shared_ptr<io::RandomAccessFile>()>& open,
                       const ScanOptions& options) {
  ScanReport report;
  report.path = path;
  std::shared_ptr<io::RandomAccessFile> file;
  try {
    file = open();
  } catch (const std::exception& e) {
    report.errors.push_back(e.what());
    report.verdict = ScanVerdict::error;
    return report;
  }
  Scanner(file, report, options).run();
  return report;
}

std::string format_label(const ScanReport& r) {
  if (r.bare_pickle) return "pickle";
  return std::string(format_name(r.format));
}

}  // namespace

ScanReport scan_file(const std::string& path, const ScanOptions& options) {
  return scan_opened(path, [&] { return io::map_file(path); }, options);
}

ScanReport scan_bytes(std::span<const std::byte> bytes, const std::string& name, const ScanOptions& options) {
  return scan_opened(name, [&] { return io::memory_file(bytes, nullptr, name); }, options);
}

namespace {

// One directory walk for scan_paths: symbolic links are followed (a Hugging
// Face cache is snapshots/<rev>/ of links into blobs/), every real directory
// is entered once (device + inode: a link cycle ends there) and every real
// file is scanned once, under the name the user sees: among several names of
// one file, a name that is a link (snapshots/<rev>/model.bin) wins over the
// link target (blobs/<sha>), else the first in sorted order.
struct DirWalk {
  struct Entry {
    std::string path;
    bool via_link = false;
  };
  std::set<std::pair<uint64_t, uint64_t>> dirs_seen;
  std::map<std::pair<uint64_t, uint64_t>, Entry> files;  // real file -> shown name
  std::vector<std::string> errors;
  size_t depth_limit = 256;

  void walk(const std::string& dir, size_t depth) {
    if (depth > depth_limit) {
      errors.push_back(dir + ": directory nesting deeper than " + std::to_string(depth_limit) + " levels, not entered");
      return;
    }
    std::vector<io::DirEntry> entries;
    try {
      entries = io::list_dir(dir);
    } catch (const IoError& e) {
      if (e.code() == EACCES) return;  // not ours to read: skipped, as find(1) would report it
      errors.push_back(dir + ": cannot list directory: " + std::strerror(e.code()));
      return;
    }
    std::sort(entries.begin(), entries.end(),
              [](const io::DirEntry& a, const io::DirEntry& b) { return a.name < b.name; });
    for (const io::DirEntry& entry : entries) {
      if (!entry.regular && !entry.directory) continue;  // a dangling link, a device, a socket...
      std::string p = dir;
      if (p.empty() || p.back() != '/') p += '/';
      p += entry.name;
      const std::pair<uint64_t, uint64_t> id{entry.device, entry.inode};
      if (entry.directory) {
        if (dirs_seen.insert(id).second) walk(p, depth + 1);
      } else {
        auto [it, inserted] = files.try_emplace(id, Entry{p, entry.symlink});
        if (!inserted && entry.symlink && !it->second.via_link) it->second = Entry{p, entry.symlink};
      }
    }
  }
};

}  // namespace

std::vector<ScanReport> scan_paths(const std::vector<std::string>& paths, const ScanOptions& options) {
  std::vector<ScanReport> out;
  auto fail = [&](const std::string& path, const std::string& msg) {
    ScanReport r;
    r.path = path;
    r.errors.push_back(path + ": " + msg);
    r.verdict = ScanVerdict::error;
    out.push_back(std::move(r));
  };
  for (const std::string& path : paths) {
    const io::FileStatus st = io::status(path);  // a path named explicitly is followed
    if (st.type == io::FileStatus::Type::missing) {
      fail(path, "cannot read: " + std::string(std::strerror(st.error)));
      continue;
    }
    if (st.regular()) {
      out.push_back(scan_file(path, options));
      continue;
    }
    if (!st.directory()) {
      fail(path, "not a regular file or directory");
      continue;
    }
    DirWalk walk;
    walk.dirs_seen.insert({st.device, st.inode});
    walk.walk(path, 0);
    for (const auto& e : walk.errors) {
      ScanReport r;
      r.path = path;
      r.errors.push_back(e);
      r.verdict = ScanVerdict::error;
      out.push_back(std::move(r));
    }
    std::vector<std::string> files;
    files.reserve(walk.files.size());
    for (const auto& [id, entry] : walk.files) files.push_back(entry.path);
    std::sort(files.begin(), files.end());
    size_t found = 0;
    for (const auto& f : files) {
      ScanReport r = scan_file(f, options);
      if (r.unrecognized) continue;  // config.json, README.md, ...
      ++found;
      out.push_back(std::move(r));
    }
    if (found == 0 && walk.errors.empty())
      fail(path, "no checkpoint or pickle found in this directory (" + std::to_string(files.size()) + " file" +
                     (files.size() == 1 ? "" : "s") + " looked at, links followed)");
  }
  return out;
}

int scan_exit_code(const std::vector<ScanReport>& reports) noexcept {
  bool error = false;
  for (const auto& r : reports) {
    if (r.verdict == ScanVerdict::dangerous) return 1;
    if (r.verdict == ScanVerdict::error) error = true;
  }
  return error ? 2 : 0;
}

std::string scan_reports_json(const std::vector<ScanReport>& reports) {
  using json = nlohmann::ordered_json;
  json doc;
  doc["schema"] = "ckpt-scan/1";
  json files = json::array();
  size_t counts[4] = {0, 0, 0, 0};
  for (const auto& r : reports) {
    ++counts[static_cast<int>(r.verdict)];
    json f;
    f["path"] = r.path;
    f["format"] = format_label(r);
    f["verdict"] = std::string(scan_verdict_name(r.verdict));
    f["pickles"] = r.pickles;
    json findings = json::array();
    for (const auto& x : r.findings) {
      json j;
      j["record"] = x.record;
      j["offset"] = x.offset;
      j["op"] = x.op;
      j["module"] = x.module;
      j["name"] = x.name;
      j["category"] = std::string(scan_category_name(x.category));
      findings.push_back(std::move(j));
    }
    f["findings"] = std::move(findings);
    f["findings_omitted"] = r.findings_omitted;
    f["errors"] = r.errors;
    files.push_back(std::move(f));
  }
  doc["files"] = std::move(files);
  json summary;
  summary["files"] = reports.size();
  summary["safe"] = counts[0];
  summary["unsafe-but-known"] = counts[1];
  summary["dangerous"] = counts[2];
  summary["error"] = counts[3];
  doc["summary"] = std::move(summary);
  doc["exit_code"] = scan_exit_code(reports);
  // Names are valid UTF-8 (the unpickler checks); paths may not be.
  return doc.dump(2, ' ', false, json::error_handler_t::replace);
}

}  // namespace ckpt
