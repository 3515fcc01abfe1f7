#include "ckpt/storage.hpp"

#include <cstdlib>
#include <cstring>
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

  ~Impl() {
    if (owns_memory) {
      std::free(data);
    } else if (backing == Backing::external && release) {
      release();
    }
  }
};

Storage Storage::allocate(size_t nbytes) {
  auto impl = std::make_shared<Impl>();
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
