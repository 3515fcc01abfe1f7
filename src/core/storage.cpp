#include "ckpt/storage.hpp"

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

#include "ckpt/error.hpp"

namespace ckpt {

struct Storage::Impl {
  std::byte* data = nullptr;
  size_t nbytes = 0;
  Backing backing = Backing::owned;
  bool writable = true;
  std::shared_ptr<const void> keepalive;  // mapped: the mapping
  std::function<void()> release;          // external: the owner's release

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  bool owns_memory = false;               // owned: data came from aligned_alloc
  size_t mapped_len = 0;                  // owned: nonzero when data is an anonymous mapping

  ~Impl() {
    if (mapped_len != 0) {
      ::munmap(data, mapped_len);
    } else if (owns_memory) {
      std::free(data);
    } else if (backing == Backing::external && release) {
      release();
    }
  }
};

namespace {

constexpr size_t kHugePage = size_t{2} << 20;
// A 2 MiB fault normally takes 0.1-0.3 ms (zeroing 2 MiB). One that takes
// longer waited for something 4 KiB pages would not: the kernel compacting
// memory, or a hypervisor handing back 2 MiB blocks that the guest's free
// page reporting (virtio-balloon) returned to it. Measured on the 2-core
// Firecracker VM this project runs on: an 800 MB load after a few idle
// seconds took 1.0 s on huge pages and 0.3 s on 4 KiB pages (0.11 s on huge
// pages when the blocks were still resident).
constexpr auto kStall = std::chrono::milliseconds(1);

// Off when CKPT_HUGE_PAGES=0 or the kernel's THP mode is "never" (then the
// advice would be ignored and the mapping only costs alignment).
bool huge_pages_wanted() {
  if (const char* env = std::getenv("CKPT_HUGE_PAGES"); env != nullptr && std::strcmp(env, "0") == 0) return false;
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  if (f && std::getline(f, mode) && mode.find("[never]") != std::string::npos) return false;
  return true;
}

std::atomic<bool>& huge_pages_state() {
  static std::atomic<bool> on{huge_pages_wanted()};
  return on;
}

// A 2 MiB-aligned anonymous mapping of at least `nbytes`, advised
// MADV_HUGEPAGE, or nullptr (the caller falls back to the heap). The mapping
// ends at the next 2 MiB boundary only when that wastes at most 1/16 of
// `nbytes`; otherwise at the next 4 KiB one, so that its last partial 2 MiB
// is faulted in 4 KiB pages (the kernel puts a huge page only where the
// mapping covers all of it). Rounding every storage up to 2 MiB cost ~1 MiB
// per tensor: 1.14x the tensor bytes in peak RSS for a 291-tensor LLM.
std::byte* map_huge(size_t nbytes, size_t* mapped_len) {
  if (nbytes > SIZE_MAX - 2 * kHugePage) return nullptr;
  constexpr size_t kPage = 4096;
  const size_t huge_len = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
  const size_t len = huge_len - nbytes <= nbytes / 16 ? huge_len : (nbytes + kPage - 1) / kPage * kPage;
  void* raw = ::mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  // Trim the unaligned head and the tail beyond `len`.
  if (aligned > base) ::munmap(raw, aligned - base);
  const size_t tail = (base + len + kHugePage) - (aligned + len);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + len), tail);
  auto* p = reinterpret_cast<std::byte*>(aligned);
  if (::madvise(p, len, MADV_HUGEPAGE) != 0) {  // a kernel without THP: plain pages
    huge_pages_state().store(false, std::memory_order_relaxed);
  } else {
    // Take the faults here, one per 2 MiB, and time each: the first stall
    // means huge pages no longer pay (memory too fragmented, or blocks the
    // hypervisor took back); the rest of this mapping and every later one
    // use 4 KiB pages. Timing only the first fault was not enough: on this
    // project's VM after an idle spell the first 20-100 faults of a mapping
    // take 0.2-0.3 ms and most later ones 2-9 ms (a probe faulting 256 MiB:
    // 0.46-0.57 s on huge pages, against 0.02 s when they are resident and
    // ~0.14 s on 4 KiB pages). The faults would be taken by the reads that
    // fill the storage anyway, so this moves the work, it does not add it.
    for (size_t off = 0; off < len; off += kHugePage) {
      const auto t0 = std::chrono::steady_clock::now();
      reinterpret_cast<volatile unsigned char*>(p)[off] = 0;
      if (std::chrono::steady_clock::now() - t0 > kStall) {
        huge_pages_state().store(false, std::memory_order_relaxed);
        ::madvise(p, len, MADV_NOHUGEPAGE);
        break;
      }
    }
  }
  *mapped_len = len;
  return p;
}

}  // namespace

bool Storage::huge_pages_active() noexcept { return huge_pages_state().load(std::memory_order_relaxed); }

Storage Storage::allocate(size_t nbytes, HugePages huge) {
  auto impl = std::make_shared<Impl>();
  if (huge == HugePages::on && nbytes >= kHugePageThreshold && huge_pages_active()) {
    size_t len = 0;
    if (std::byte* p = map_huge(nbytes, &len)) {
      impl->data = p;
      impl->mapped_len = len;
      impl->owns_memory = true;
      impl->nbytes = nbytes;
      return Storage(std::move(impl));
    }
  }
  // aligned_alloc wants a size that is a multiple of the alignment, and a
  // non-null pointer for zero bytes keeps data() meaningful.
  size_t rounded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded < nbytes) throw std::bad_alloc();
  if (rounded == 0) rounded = kAlignment;
  impl->data = static_cast<std::byte*>(std::aligned_alloc(kAlignment, rounded));
  if (impl->data == nullptr) throw std::bad_alloc();
  impl->owns_memory = true;
  impl->nbytes = nbytes;
  return Storage(std::move(impl));
}

Storage Storage::copy_of(std::span<const std::byte> bytes) {
  Storage s = allocate(bytes.size());
  if (!bytes.empty()) std::memcpy(s.impl_->data, bytes.data(), bytes.size());
  return s;
}

Storage Storage::mapped(std::shared_ptr<const void> keepalive, const std::byte* data, size_t nbytes) {
  auto impl = std::make_shared<Impl>();
  impl->data = const_cast<std::byte*>(data);  // never written: writable = false
  impl->nbytes = nbytes;
  impl->backing = Backing::mapped;
  impl->writable = false;
  impl->keepalive = std::move(keepalive);
  return Storage(std::move(impl));
}

Storage Storage::external(std::byte* data, size_t nbytes, std::function<void()> release,
                          bool writable) {
  auto impl = std::make_shared<Impl>();
  impl->data = data;
  impl->nbytes = nbytes;
  impl->backing = Backing::external;
  impl->writable = writable;
  impl->release = std::move(release);
  return Storage(std::move(impl));
}

Storage Storage::slice(size_t offset, size_t nbytes) const {
  if (!impl_ || offset > impl_->nbytes || nbytes > impl_->nbytes - offset)
    throw Error("storage slice [" + std::to_string(offset) + ", +" + std::to_string(nbytes) +
                ") is outside a storage of " + std::to_string(this->nbytes()) + " bytes");
  auto impl = std::make_shared<Impl>();
  impl->data = impl_->data + offset;
  impl->nbytes = nbytes;
  impl->backing = impl_->backing;
  impl->writable = impl_->writable;
  impl->keepalive = impl_;  // the parent stays alive; nothing is freed twice
  return Storage(std::move(impl));
}

size_t Storage::nbytes() const noexcept { return impl_ ? impl_->nbytes : 0; }
const std::byte* Storage::data() const noexcept { return impl_ ? impl_->data : nullptr; }
bool Storage::writable() const noexcept { return impl_ && impl_->writable; }
Storage::Backing Storage::backing() const noexcept {
  return impl_ ? impl_->backing : Backing::owned;
}

std::byte* Storage::mutable_data() const {
  if (!impl_) return nullptr;
  if (!impl_->writable)
    throw Error("storage is read-only (memory-mapped); copy the tensor before writing to it");
  return impl_->data;
}

}  // namespace ckpt
