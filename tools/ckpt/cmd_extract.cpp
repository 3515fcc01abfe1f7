// ckpt extract FILE NAME -o OUT.npy | ckpt extract FILE --all DIR — tensors as NumPy .npy files.
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>

#include "ckpt/elements.hpp"
#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "progress.hpp"

namespace ckpt::cli {
namespace {

struct ExtractArgs {
  std::string file;
  std::string name;
  std::string out;
  std::string all_dir;
  std::string as;
  std::string filter;
  ReadFlags read;
};

// NumPy's type string for a dtype, or "" when NumPy has no such type.
std::string npy_descr(DType d) {
  switch (d) {
    case DType::bool_: return "|b1";
    case DType::int8: return "|i1";
    case DType::uint8: return "|u1";
    case DType::int16: return "<i2";
    case DType::uint16: return "<u2";
    case DType::int32: return "<i4";
    case DType::uint32: return "<u4";
    case DType::int64: return "<i8";
    case DType::uint64: return "<u8";
    case DType::float16: return "<f2";
    case DType::float32: return "<f4";
    case DType::float64: return "<f8";
    case DType::complex64: return "<c8";
    case DType::complex128: return "<c16";
    default: return "";
  }
}

// The .npy header: magic, version, header length, then the dict padded with
// spaces and a newline so that the data starts on a 64-byte boundary.
std::string npy_header(const std::string& descr, const std::vector<int64_t>& shape) {
  std::string shape_s = "(";
  for (size_t i = 0; i < shape.size(); ++i) shape_s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) shape_s += ",";
  shape_s += ")";
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_s + ", }";
  constexpr size_t kAlign = 64;  // NumPy aligns the data to 64 bytes
  // Version 1.0 has a 2-byte length (header under 64 KiB); 2.0 a 4-byte one.
  size_t prefix = 10;
  bool v2 = dict.size() + 1 + kAlign + prefix > 65535;
  if (v2) prefix = 12;
  size_t total = prefix + dict.size() + 1;
  size_t pad = (kAlign - total % kAlign) % kAlign;
  dict.append(pad, ' ');
  dict += '\n';
  std::string h = "\x93NUMPY";
  h += static_cast<char>(v2 ? 2 : 1);
  h += '\0';
  const uint32_t len = static_cast<uint32_t>(dict.size());
  h += static_cast<char>(len & 0xff);
  h += static_cast<char>((len >> 8) & 0xff);
  if (v2) {
    h += static_cast<char>((len >> 16) & 0xff);
    h += static_cast<char>((len >> 24) & 0xff);
  }
  return h + dict;
}

// The target dtype for `t`: its own, or --as; throws with a suggestion when
// NumPy cannot hold it.
DType target_dtype(const Tensor& t, const std::string& as, const std::string& path) {
  if (as.empty()) {
    if (!npy_descr(t.dtype()).empty()) return t.dtype();
    const std::string dn(name(t.dtype()));
    const ElementClass c = element_class(t.dtype());
    if (c == ElementClass::floating)
      throw Error("tensor '" + path + "' is " + dn + ", which NumPy has no type for; use --as float32 to convert it");
    if (c == ElementClass::complex)
      throw Error("tensor '" + path + "' is " + dn + ", which NumPy has no type for; use --as complex64 to convert it");
    if (t.dtype() == DType::qint8 || t.dtype() == DType::quint8 || t.dtype() == DType::qint32)
      throw Error("tensor '" + path + "' is " + dn +
                  " (quantized); use --as int32 or --as float32 to write its stored integers (scale and zero point are not applied)");
    throw Error("tensor '" + path + "' is " + dn + ", which has no numeric meaning; it cannot be written as .npy");
  }
  auto d = dtype_from_name(as);
  if (d == DType::float16 && t.dtype() != DType::float16)
    throw Error("--as float16 is not supported (it would round); use --as float32");
  if (!d || npy_descr(*d).empty())
    throw Error("--as " + as + ": not a dtype NumPy has (bool, int8..int64, uint8..uint64, float16/32/64, complex64/128)");
  if (element_class(t.dtype()) == ElementClass::raw)
    throw Error("tensor '" + path + "' is " + std::string(name(t.dtype())) + ", which has no numeric meaning; --as cannot convert it");
  if (element_class(t.dtype()) == ElementClass::complex && element_class(*d) != ElementClass::complex)
    throw Error("tensor '" + path + "' is complex; --as must be complex64 or complex128");
  return *d;
}

// Writes one tensor as .npy to `out` (to a temporary, then renamed).
void write_npy(const Tensor& t, const std::string& path, const std::string& as, const std::string& out) {
  const DType to = target_dtype(t, as, path);
  const std::string header = npy_header(npy_descr(to), t.sizes());
  // Everything that can fail on the data happens before the file is created.
  std::vector<std::byte> converted;
  if (to != t.dtype()) {
    converted.resize(static_cast<size_t>(t.numel()) * itemsize(to));
    cast_elements(t, to, converted);  // as torch's .to(dtype); target_dtype admitted the pair
  } else if (!t.is_contiguous()) {
    converted = t.contiguous_bytes();  // non-contiguous views are written row-major
  }
  const std::string tmp = out + ".tmp";
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(tmp.c_str(), "wb"), &std::fclose);
  if (!f) throw IoError("cannot create '" + tmp + "': " + std::strerror(errno), errno, ErrorContext{out});
  auto write = [&](const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f.get()) != n) {
      int err = errno;
      f.reset();
      std::remove(tmp.c_str());
      throw IoError("cannot write '" + tmp + "': " + std::strerror(err), err, ErrorContext{out});
    }
  };
  write(header.data(), header.size());
  if (to == t.dtype() && t.is_contiguous()) write(t.data(), t.nbytes());
  else write(converted.data(), converted.size());
  if (std::fclose(f.release()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw IoError("cannot write '" + tmp + "': " + std::strerror(err), err, ErrorContext{out});
  }
  std::error_code ec;
  std::filesystem::rename(tmp, out, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw IoError("cannot rename '" + tmp + "' to '" + out + "': " + ec.message(), ec.value(), ErrorContext{out});
  }
}

// A file name for a tensor path: '/' becomes '.', characters outside
// [A-Za-z0-9._-] become '_', a leading '.' gets a '_' in front, long names
// are cut; a name taken already (compared case-insensitively) gets "~2",
// "~3"... Then ".npy".
std::string file_name_for(const std::string& path, std::set<std::string>& taken) {
  constexpr size_t kMaxStem = 200;  // file systems allow 255 bytes; room for the suffixes
  std::string stem;
  for (char c : path) {
    if (c == '/') stem += '.';
    else if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') stem += c;
    else stem += '_';
  }
  if (stem.empty() || stem[0] == '.') stem = "_" + stem;
  if (stem.size() > kMaxStem) stem.resize(kMaxStem);
  auto lower = [](std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  std::string name = stem;
  for (int n = 2; taken.count(lower(name)); ++n) name = stem + "~" + std::to_string(n);
  taken.insert(lower(name));
  return name + ".npy";
}

int run_extract_unnamed(const ExtractArgs& a);

int run_extract(const ExtractArgs& a) {
  if (a.all_dir.empty() == a.name.empty())
    throw Error("give either a tensor NAME (with -o OUT.npy) or --all DIR");
  if (!a.all_dir.empty() && !a.out.empty()) throw Error("-o goes with NAME; --all writes into DIR");
  try {
    return run_extract_unnamed(a);
  } catch (Error& e) {
    e.add_context(ErrorContext{a.file});  // name the checkpoint when the error does not
    throw;
  }
}

int run_extract_unnamed(const ExtractArgs& a) {
  const Loaded l = load_checkpoint(a.file, a.read);

  if (a.all_dir.empty()) {
    const Tensor* found = nullptr;
    std::vector<std::string> names;
    for_each_tensor(l.root, [&](const std::string& p, const Tensor& t) {
      if (p == a.name && !found) found = &t;
      names.push_back(p);
    });
    if (!found) {
      std::string msg = "no tensor named '" + a.name + "'";
      if (!names.empty()) msg += " (it has " + thousands(names.size()) + " tensors, e.g. '" + names[0] + "'; see 'ckpt ls " + a.file + "')";
      throw Error(msg);
    }
    std::string out = a.out;
    if (out.empty()) {
      std::set<std::string> taken;
      out = file_name_for(a.name, taken);
    }
    write_npy(*found, a.name, a.as, out);
    std::fprintf(stderr, "ckpt: wrote %s (%s %s%s)\n", out.c_str(), std::string(name(found->dtype())).c_str(),
                 format_shape(found->sizes()).c_str(), a.as.empty() ? "" : (" as " + a.as).c_str());
    return kExitOk;
  }

  const std::vector<TensorRef> tensors = select_tensors(l.root, compile_filter(a.filter));
  const uint64_t total = total_nbytes(tensors);
  std::error_code ec;
  std::filesystem::create_directories(a.all_dir, ec);
  if (ec) throw IoError("cannot create directory '" + a.all_dir + "': " + ec.message(), ec.value(), ErrorContext{a.all_dir});
  std::set<std::string> taken = {"index"};  // index.json is ours
  nlohmann::ordered_json index = nlohmann::ordered_json::object();
  {
    Progress bar("extract", total, Progress::Unit::bytes);
    for (const auto& r : tensors) {
      bar.set_detail(r.path);
      const std::string fname = file_name_for(r.path, taken);
      write_npy(*r.tensor, r.path, a.as, (std::filesystem::path(a.all_dir) / fname).string());
      index[r.path] = fname;
      bar.advance(r.tensor->nbytes());
    }
    bar.finish();
  }
  const std::string index_path = (std::filesystem::path(a.all_dir) / "index.json").string();
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(index_path.c_str(), "wb"), &std::fclose);
  const std::string text = index.dump(2) + "\n";
  if (!f || std::fwrite(text.data(), 1, text.size(), f.get()) != text.size())
    throw IoError("cannot write '" + index_path + "': " + std::strerror(errno), errno, ErrorContext{index_path});
  std::fprintf(stderr, "ckpt: wrote %s tensors (%s) to %s, names in %s\n", thousands(tensors.size()).c_str(),
               human_bytes(total).c_str(), a.all_dir.c_str(), index_path.c_str());
  return kExitOk;
}

}  // namespace

void register_extract(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<ExtractArgs>();
  CLI::App* cmd = app.add_subcommand("extract", "Write a tensor (or all of them) as NumPy .npy files");
  cmd->add_option("FILE", args->file, "Checkpoint file")->required();
  cmd->add_option("NAME", args->name, "Tensor path, as 'ckpt ls' prints it");
  cmd->add_option("-o,--output", args->out, "Output .npy file (default: NAME with '/' as '.', plus .npy)");
  cmd->add_option("--all", args->all_dir, "Write every tensor into this directory (names in DIR/index.json)");
  cmd->add_option("--filter", args->filter, "With --all: only tensors whose path matches this regular expression");
  cmd->add_option("--as", args->as, "Convert to this dtype first (e.g. float32 for bfloat16 and float8 tensors)");
  add_read_flags(cmd, args->read);
  cmd->callback([args, exit_code] { *exit_code = run_extract(*args); });
}

}  // namespace ckpt::cli
