// Private: checkpoint file names from a template such as
// "epoch={epoch:03d}-val_loss={val_loss:.4f}.pt", and the way back (which
// step and metrics a file name encodes, for adopting files the manifest does
// not know).
//
// Fields: {name} (step in decimal; a metric in decimal when it is integral,
// else the shortest text that reads back as the same double), {name:[0][W]d}
// (an integer, optionally zero-padded to width W) and {name:[0][W].Pf} (P
// decimals). "{{" and "}}" are literal braces. `name` is "step" or a metric.
#pragma once

#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "ckpt/manager.hpp"

namespace ckpt::manager {

class FilenameTemplate {
 public:
  // Throws ckpt::Error naming the template and the bad part.
  explicit FilenameTemplate(const std::string& text);

  // The file name for a checkpoint. Throws ckpt::Error when a metric the
  // template names is missing or a {name:d} metric is not an integer.
  std::string format(int64_t step, const Metrics& metrics) const;

  // `name` with "-v<n>" inserted before the template's extension (the part of
  // the template's trailing literal from its last '.'), or appended.
  std::string with_version(const std::string& name, int n) const;

  struct Parsed {
    std::optional<int64_t> step;
    Metrics metrics;
  };
  // What a file name produced by format()/with_version() encodes; nullopt when
  // it does not match the template.
  std::optional<Parsed> parse(const std::string& file_name) const;

  bool has_step() const noexcept { return has_step_; }
  const std::string& text() const noexcept { return text_; }

 private:
  struct Field {
    std::string name;
    enum Kind { plain, integer, fixed } kind = plain;
    bool zero_pad = false;
    int width = 0;
    int precision = 0;
  };
  struct Segment {
    bool is_field = false;
    std::string literal;
    Field field;
  };
  std::string text_;
  std::vector<Segment> segments_;
  std::vector<std::string> capture_names_;  // field name per regex group
  std::regex regex_;
  size_t extension_len_ = 0;  // length of the extension in the trailing literal
  bool has_step_ = false;
};

}  // namespace ckpt::manager
