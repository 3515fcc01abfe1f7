// Large owned storages on transparent huge pages (Storage::allocate, LoadOptions::huge_pages).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

#include "ckpt/ckpt.hpp"
#include "test_util.hpp"

using namespace ckpt;

namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

// The VmFlags line of the mapping of /proc/self/smaps that holds `p`
// ("" when none does). "hg" there is MADV_HUGEPAGE, "nh" MADV_NOHUGEPAGE.
std::string vm_flags_of(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = addr >= lo && addr < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

bool has_flag(const std::string& vm_flags, const char* flag) {
  return vm_flags.find(std::string(" ") + flag) != std::string::npos;
}

}  // namespace

TEST(HugePages, LargeAllocationsAreAlignedAndAdvised) {
  if (!Storage::huge_pages_active()) GTEST_SKIP() << "transparent huge pages are off here (or CKPT_HUGE_PAGES=0)";
  const size_t n = Storage::kHugePageThreshold + 12345;  // not a multiple of 2 MiB
  Storage s = Storage::allocate(n);
  ASSERT_EQ(s.nbytes(), n);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % kHugePage, 0u);
  if (Storage::huge_pages_active()) {
    EXPECT_TRUE(has_flag(vm_flags_of(s.data()), "hg")) << vm_flags_of(s.data());
  } else {  // this allocation's first fault stalled: the rest of it went back to 4 KiB pages
    EXPECT_TRUE(has_flag(vm_flags_of(s.data()), "nh")) << vm_flags_of(s.data());
  }
  // Every byte, the last one included, is writable and keeps what was written.
  std::memset(s.mutable_data(), 0x5a, n);
  EXPECT_EQ(s.data()[n - 1], std::byte{0x5a});
  EXPECT_EQ(s.backing(), Storage::Backing::owned);
  // Slices keep the mapping alive after the parent handle is gone.
  Storage tail = s.slice(n - 16, 16);
  s = Storage();
  EXPECT_EQ(tail.data()[15], std::byte{0x5a});
}

TEST(HugePages, SmallAllocationsAndOffStayOnTheHeap) {
  Storage small = Storage::allocate(Storage::kHugePageThreshold - 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % Storage::kAlignment, 0u);
  EXPECT_FALSE(has_flag(vm_flags_of(small.data()), "hg"));
  Storage off = Storage::allocate(Storage::kHugePageThreshold * 2, Storage::HugePages::off);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(off.data()) % Storage::kAlignment, 0u);
  EXPECT_FALSE(has_flag(vm_flags_of(off.data()), "hg"));
  std::memset(off.mutable_data(), 1, off.nbytes());
}

TEST(HugePages, CopyingLoadsUseThemUnlessLoadOptionsSayOff) {
  ckpt::testing::TempDir dir;
  const std::string path = dir.path() + "/big.pt";
  const int64_t rows = 1536, cols = 1024;  // 6 MiB of float32
  Tensor big = Tensor::empty(DType::float32, {rows, cols});
  auto* f = reinterpret_cast<float*>(big.storage().mutable_data());
  for (int64_t i = 0; i < rows * cols; ++i) f[i] = static_cast<float>(i % 1000) * 0.5f;
  StateDict sd;
  sd.set("big", big);
  save_state_dict(path, sd);

  for (bool huge : {true, false}) {
    LoadOptions o;
    o.huge_pages = huge;
    StateDict back = load_state_dict(path, o);
    const Tensor& t = back.at("big");
    ASSERT_EQ(std::memcmp(t.storage().data(), big.storage().data(), big.storage().nbytes()), 0);
    const std::string flags = vm_flags_of(t.storage().data());
    if (huge && Storage::huge_pages_active()) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.storage().data()) % kHugePage, 0u);
      EXPECT_TRUE(has_flag(flags, "hg")) << flags;
    } else if (huge) {  // a stalled first fault turned them off during this load
      EXPECT_FALSE(has_flag(flags, "hg") && Storage::huge_pages_active()) << flags;
    } else {
      EXPECT_FALSE(has_flag(flags, "hg")) << flags;
    }
  }
}
