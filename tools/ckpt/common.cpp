#include "common.hpp"

#include <openssl/evp.h>

#include <cstdio>
#include <memory>
#include <vector>

namespace ckpt::cli {

std::string key_to_path_part(const Value& key) {
  if (key.is_string()) return key.as_string();
  if (key.is_int() || key.is_bool()) return std::to_string(key.as_int());
  return key.repr();
}

void walk_tensors(const Value& root, const std::function<void(const TensorRef&)>& fn) {
  // Iterative DFS; values from ckpt's loaders are acyclic and depth-limited.
  struct Frame {
    const Value* value;
    std::string path;
  };
  std::vector<Frame> stack;
  stack.push_back({&root, ""});
  auto join = [](const std::string& base, const std::string& part) {
    return base.empty() ? part : base + "/" + part;
  };
  while (!stack.empty()) {
    Frame f = std::move(stack.back());
    stack.pop_back();
    const Value& v = *f.value;
    std::vector<Frame> children;
    switch (v.kind()) {
      case Value::Kind::Tensor:
        fn({f.path, &v.as_tensor()});
        break;
      case Value::Kind::Dict:
        for (const auto& [k, val] : v.as_dict()) children.push_back({&val, join(f.path, key_to_path_part(k))});
        break;
      case Value::Kind::List:
      case Value::Kind::Tuple: {
        const List& items = v.items();
        for (size_t i = 0; i < items.size(); ++i) children.push_back({&items[i], join(f.path, std::to_string(i))});
        break;
      }
      case Value::Kind::Object: {
        const Object& o = v.as_object();
        children.push_back({&o.state, f.path});
        break;
      }
      default:
        break;
    }
    for (auto it = children.rbegin(); it != children.rend(); ++it) stack.push_back(std::move(*it));
  }
}

std::string sha256_hex(const Tensor& t) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  if (t.is_contiguous()) {
    EVP_DigestUpdate(ctx.get(), t.data(), t.nbytes());
  } else {
    auto bytes = t.contiguous_bytes();
    EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size());
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < len; ++i) {
    hex += digits[md[i] >> 4];
    hex += digits[md[i] & 15];
  }
  return hex;
}

std::string human_bytes(uint64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (n < 1024) return std::to_string(n) + " B";
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

std::string thousands(uint64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

void print_error(const std::string& message) { std::fprintf(stderr, "ckpt: error: %s\n", message.c_str()); }

}  // namespace ckpt::cli
