#include "manager/filename_template.hpp"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "ckpt/error.hpp"

namespace ckpt::manager {
namespace {

// Widths and precisions beyond this are surely typos, and keep snprintf's
// output small.
constexpr int kMaxWidth = 40;

[[noreturn]] void bad_template(const std::string& text, const std::string& why) {
  throw Error("filename template '" + text + "': " + why +
              " (fields are {name}, {name:0Nd} or {name:.Nf}; name is 'step' or a metric)");
}

bool valid_field_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name)
    if (c == '{' || c == '}' || c == ':' || c == '/' || c == '\0') return false;
  return true;
}

std::string regex_escape(const std::string& s) {
  static const std::string kSpecial = R"(\^$.|?*+()[]{})";
  std::string out;
  for (char c : s) {
    if (kSpecial.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// Shortest text that reads back as the same double (integral values without
// a fraction, as Python prints them with {name:.0f}).
std::string shortest(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == std::trunc(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::optional<double> parse_double(const std::string& s) {
  if (s == "nan") return std::nan("");
  if (s == "inf") return HUGE_VAL;
  if (s == "-inf") return -HUGE_VAL;
  double v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

FilenameTemplate::FilenameTemplate(const std::string& text) : text_(text) {
  if (text.empty()) bad_template(text, "is empty");
  std::string literal;
  auto flush_literal = [&] {
    if (!literal.empty()) segments_.push_back(Segment{false, std::move(literal), {}});
    literal.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '}') {
      if (i + 1 < text.size() && text[i + 1] == '}') {
        literal += '}';
        ++i;
        continue;
      }
      bad_template(text, "unmatched '}' at position " + std::to_string(i) + " (write '}}' for a brace)");
    }
    if (c != '{') {
      literal += c;
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '{') {
      literal += '{';
      ++i;
      continue;
    }
    size_t close = text.find('}', i);
    if (close == std::string::npos) bad_template(text, "unterminated '{' at position " + std::to_string(i));
    std::string body = text.substr(i + 1, close - i - 1);
    std::string spec;
    Field f;
    if (size_t colon = body.find(':'); colon != std::string::npos) {
      f.name = body.substr(0, colon);
      spec = body.substr(colon + 1);
    } else {
      f.name = body;
    }
    if (!valid_field_name(f.name)) bad_template(text, "bad field '{" + body + "}'");
    if (!spec.empty()) {
      // [0][W]d  or  [0][W].Pf
      size_t p = 0;
      if (spec[p] == '0') {
        f.zero_pad = true;
        ++p;
      }
      int width = 0;
      while (p < spec.size() && std::isdigit(static_cast<unsigned char>(spec[p])) && width <= kMaxWidth)
        width = width * 10 + (spec[p++] - '0');
      f.width = width;
      bool ok = false;
      if (p + 1 == spec.size() && spec[p] == 'd') {
        f.kind = Field::integer;
        ok = true;
      } else if (p < spec.size() && spec[p] == '.') {
        ++p;
        int prec = 0;
        size_t digits = 0;
        while (p < spec.size() && std::isdigit(static_cast<unsigned char>(spec[p])) && prec <= kMaxWidth) {
          prec = prec * 10 + (spec[p++] - '0');
          ++digits;
        }
        if (digits > 0 && p + 1 == spec.size() && spec[p] == 'f') {
          f.kind = Field::fixed;
          f.precision = prec;
          ok = true;
        }
      }
      if (!ok || f.width > kMaxWidth || f.precision > kMaxWidth)
        bad_template(text, "unsupported format '" + spec + "' in '{" + body + "}'");
    }
    if (f.name == "step") {
      if (f.kind == Field::fixed) bad_template(text, "{step} is an integer: use {step} or {step:0Nd}");
      has_step_ = true;
    }
    flush_literal();
    segments_.push_back(Segment{true, {}, std::move(f)});
    i = close;
  }
  flush_literal();

  // The extension: from the last '.' of a trailing literal.
  if (!segments_.empty() && !segments_.back().is_field) {
    const std::string& tail = segments_.back().literal;
    if (size_t dot = tail.rfind('.'); dot != std::string::npos) extension_len_ = tail.size() - dot;
  }

  // The way back: one regex group per field, then the optional version.
  std::string re;
  for (size_t s = 0; s < segments_.size(); ++s) {
    const Segment& seg = segments_[s];
    if (!seg.is_field) {
      std::string lit = seg.literal;
      if (s + 1 == segments_.size() && extension_len_ > 0) {
        re += regex_escape(lit.substr(0, lit.size() - extension_len_));
        re += "(?:-v[0-9]+)?";
        re += regex_escape(lit.substr(lit.size() - extension_len_));
      } else {
        re += regex_escape(lit);
      }
      continue;
    }
    const Field& f = seg.field;
    capture_names_.push_back(f.name);
    if (f.name == "step" || f.kind == Field::integer)
      re += "( *-?[0-9]+)";
    else
      re += "( *-?[0-9][0-9.eE+-]*|nan|-?inf)";
  }
  if (extension_len_ == 0) re += "(?:-v[0-9]+)?";
  regex_ = std::regex(re, std::regex::ECMAScript);

  // A name that could leave the directory or hide as a temporary is refused
  // up front (formatted values never contain '/').
  for (const Segment& seg : segments_)
    if (!seg.is_field && seg.literal.find('/') != std::string::npos)
      bad_template(text, "must be a file name, without '/'");
  if (!segments_.front().is_field && segments_.front().literal[0] == '.')
    bad_template(text, "must not start with '.' (reserved for temporary files)");
}

std::string FilenameTemplate::format(int64_t step, const Metrics& metrics) const {
  std::string out;
  char buf[128];
  for (const Segment& seg : segments_) {
    if (!seg.is_field) {
      out += seg.literal;
      continue;
    }
    const Field& f = seg.field;
    bool is_step = f.name == "step";
    double value = 0;
    if (!is_step) {
      auto it = metrics.find(f.name);
      if (it == metrics.end()) {
        std::string have;
        for (const auto& [k, v] : metrics) have += (have.empty() ? "" : ", ") + k;
        throw Error("filename template '" + text_ + "' needs metric '" + f.name +
                    "', but this save has " + (have.empty() ? "no metrics" : "metrics {" + have + "}"));
      }
      value = it->second;
    }
    switch (f.kind) {
      case Field::plain:
        out += is_step ? std::to_string(step) : shortest(value);
        break;
      case Field::integer: {
        long long n = step;
        if (!is_step) {
          if (!std::isfinite(value) || value != std::trunc(value) || std::fabs(value) > 9.0e18)
            throw Error("filename template '" + text_ + "': metric '" + f.name + "' is " + shortest(value) +
                        ", not an integer, but '{" + f.name + ":d}' formats integers");
          n = static_cast<long long>(value);
        }
        std::snprintf(buf, sizeof buf, f.zero_pad ? "%0*lld" : "%*lld", f.width, n);
        out += buf;
        break;
      }
      case Field::fixed:
        std::snprintf(buf, sizeof buf, f.zero_pad ? "%0*.*f" : "%*.*f", f.width, f.precision, value);
        out += buf;
        break;
    }
  }
  return out;
}

std::string FilenameTemplate::with_version(const std::string& name, int n) const {
  std::string v = "-v" + std::to_string(n);
  if (extension_len_ > 0 && name.size() > extension_len_)
    return name.substr(0, name.size() - extension_len_) + v + name.substr(name.size() - extension_len_);
  return name + v;
}

std::optional<FilenameTemplate::Parsed> FilenameTemplate::parse(const std::string& file_name) const {
  std::smatch m;
  if (!std::regex_match(file_name, m, regex_)) return std::nullopt;
  Parsed out;
  for (size_t i = 0; i < capture_names_.size(); ++i) {
    std::string s = m[i + 1].str();
    size_t first = s.find_first_not_of(' ');
    s = first == std::string::npos ? "" : s.substr(first);
    const std::string& name = capture_names_[i];
    if (name == "step") {
      int64_t v = 0;
      auto r = std::from_chars(s.data(), s.data() + s.size(), v);
      if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
      if (out.step && *out.step != v) return std::nullopt;
      out.step = v;
    } else {
      auto v = parse_double(s);
      if (!v) return std::nullopt;
      out.metrics[name] = *v;
    }
  }
  return out;
}

}  // namespace ckpt::manager
