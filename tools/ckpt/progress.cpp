#include "progress.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "common.hpp"

namespace ckpt::cli {
namespace {
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);  // smooth enough, cheap on slow terminals
constexpr int kBarWidth = 30;
constexpr size_t kDetailWidth = 40;  // keeps the line inside an 80-column terminal
}  // namespace

bool Progress::stderr_is_terminal() noexcept {
  return isatty(STDERR_FILENO) == 1 && std::getenv("CKPT_NO_PROGRESS") == nullptr;
}

Progress::Progress(std::string label, uint64_t total, Unit unit)
    : label_(std::move(label)), total_(total), unit_(unit), enabled_(stderr_is_terminal()) {
  if (enabled_) draw(true);
}

Progress::~Progress() {
  if (!finished_) finish();
}

void Progress::advance(uint64_t n) {
  done_ += n;
  if (enabled_) draw(false);
}

void Progress::set_detail(std::string detail) {
  detail = printable(detail);
  if (detail.size() > kDetailWidth) detail = "..." + detail.substr(detail.size() - (kDetailWidth - 3));
  detail_ = std::move(detail);
}

void Progress::draw(bool force) {
  auto now = std::chrono::steady_clock::now();
  if (!force && drawn_ && now - last_ < kRedrawInterval) return;
  last_ = now;
  drawn_ = true;
  const double frac = total_ == 0 ? 1.0 : static_cast<double>(done_ > total_ ? total_ : done_) / static_cast<double>(total_);
  const int fill = static_cast<int>(frac * kBarWidth);
  std::string bar(static_cast<size_t>(fill), '#');
  bar.append(static_cast<size_t>(kBarWidth - fill), '-');
  const std::string count = unit_ == Unit::bytes ? human_bytes(done_) + " / " + human_bytes(total_)
                                                 : thousands(done_) + " / " + thousands(total_);
  std::fprintf(stderr, "\r\x1b[2K%s [%s] %3d%% %s %s", label_.c_str(), bar.c_str(), static_cast<int>(frac * 100),
               count.c_str(), detail_.c_str());
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  done_ = total_;
  detail_.clear();
  draw(true);
  std::fprintf(stderr, "\r\x1b[2K");
  std::fflush(stderr);
}

}  // namespace ckpt::cli
