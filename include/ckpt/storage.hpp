// ckpt/storage.hpp — a shared, reference-counted byte buffer.
//
// A Storage is what PyTorch calls an untyped storage: the bytes that one or
// more tensors view. Copying a Storage copies the handle, not the bytes; all
// copies see the same memory, which is how tied weights and views stay shared
// through a load/save round trip. The bytes live in one of three backings:
//   - owned:    64-byte aligned memory allocated by ckpt (writable; large
//               buffers 2 MiB aligned on transparent huge pages);
//   - mapped:   a window into a read-only memory-mapped file (the mapping
//               stays alive as long as any Storage refers to it);
//   - external: memory owned by someone else (a LibTorch tensor, a caller's
//               buffer), released through a callback when the last handle
//               goes away.
// Handles are thread-safe to copy and destroy (std::shared_ptr); the bytes
// themselves are not synchronised.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <span>

namespace ckpt {

class Storage {
 public:
  enum class Backing : unsigned char { owned, mapped, external };

  // Alignment of owned allocations; matches torch's zip record alignment so
  // that owned and mapped storages have the same guarantees.
  static constexpr size_t kAlignment = 64;

  Storage() = default;  // an empty (null) storage with no bytes

  // Owned, uninitialised bytes. Allocations of kHugePageThreshold bytes or more
  // are placed on 2 MiB boundaries in their own anonymous mapping advised
  // MADV_HUGEPAGE and faulted in when allocated, one 2 MiB page at a time
  // (several times faster than 4 KiB pages for a fresh GiB), unless `huge`
  // is off, the environment sets CKPT_HUGE_PAGES=0, or an earlier huge-page
  // fault stalled (see huge_pages_active()). Smaller ones are 64-byte aligned
  // heap memory, faulted in when first written.
  enum class HugePages : unsigned char { on, off };
  static constexpr size_t kHugePageThreshold = size_t{4} << 20;
  static Storage allocate(size_t nbytes, HugePages huge = HugePages::on);
  // Whether large allocations still use huge pages in this process: false when
  // CKPT_HUGE_PAGES=0, when transparent huge pages are disabled in the kernel,
  // or after one huge-page fault took longer than 1 ms (a normal one takes
  // 0.1-0.3 ms: the kernel compacted memory on the faulting thread, or a
  // hypervisor had taken the 2 MiB block back through free page reporting).
  // Every fault is timed, as allocate() takes them; after the first stall
  // the rest of that allocation and every later one use normal pages — one
  // bounded stall, never a slower load.
  static bool huge_pages_active() noexcept;
  // Owned copy of `bytes`.
  static Storage copy_of(std::span<const std::byte> bytes);
  // A read-only view of memory kept alive by `keepalive` (e.g. a mapping).
  static Storage mapped(std::shared_ptr<const void> keepalive, const std::byte* data, size_t nbytes);
  // Memory owned by someone else; `release` (may be empty) runs when the last
  // handle is destroyed.
  static Storage external(std::byte* data, size_t nbytes, std::function<void()> release,
                          bool writable = true);

  // A storage aliasing bytes [offset, offset + nbytes) of this one (legacy
  // storage views). It keeps this storage alive and has its writability.
  // Throws ckpt::Error when the range is outside.
  Storage slice(size_t offset, size_t nbytes) const;

  explicit operator bool() const noexcept { return impl_ != nullptr; }
  size_t nbytes() const noexcept;
  const std::byte* data() const noexcept;
  // Writable pointer; throws ckpt::Error for read-only (mapped) storages.
  std::byte* mutable_data() const;
  bool writable() const noexcept;
  Backing backing() const noexcept;
  std::span<const std::byte> bytes() const noexcept { return {data(), nbytes()}; }

  // Identity: two handles to the same buffer compare equal.
  const void* id() const noexcept { return impl_.get(); }
  friend bool operator==(const Storage& a, const Storage& b) noexcept { return a.impl_ == b.impl_; }
  long use_count() const noexcept { return impl_.use_count(); }

  struct Impl;

 private:
  explicit Storage(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace ckpt
