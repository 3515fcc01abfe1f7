// A progress bar on standard error, for long work in the ckpt tool.
//
// Drawn only when stderr is a terminal (never into a pipe or a file, and
// never with CKPT_NO_PROGRESS set); redrawn at most ten times a second, and
// erased by finish() or the destructor, so stdout output stays clean.
//
//   Progress bar("diff", total_bytes, Progress::Unit::bytes);
//   for (...) bar.advance(n);
//   bar.finish();
//
// Not thread-safe: one thread advances a bar.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace ckpt::cli {

class Progress {
 public:
  enum class Unit : uint8_t { items, bytes };

  Progress(std::string label, uint64_t total, Unit unit = Unit::items);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Whether this bar draws anything (stderr is a terminal).
  bool enabled() const noexcept { return enabled_; }
  void advance(uint64_t n = 1);
  // What the bar says after the count, e.g. the current tensor's path.
  void set_detail(std::string detail);
  // Draws the final state and erases the line.
  void finish();

  // Whether stderr is a terminal and CKPT_NO_PROGRESS is unset.
  static bool stderr_is_terminal() noexcept;

 private:
  void draw(bool force);
  std::string label_;
  std::string detail_;
  uint64_t total_;
  uint64_t done_ = 0;
  Unit unit_;
  bool enabled_;
  bool drawn_ = false;
  bool finished_ = false;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace ckpt::cli
