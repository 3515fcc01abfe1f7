// fuzz_unpickler: the pickle VM on raw bytes, under both global policies.
//
// Each input is decoded three ways (and once more with the plan of memo
// reads off, which must give the same outcome): weights_only (with TorchScript's
// accept_inert hook for __torch__.* classes, and numpy decoding), inspect, and
// inspect with numpy decoding and a `consumed` counter as the legacy reader
// calls it. A persistent_load shaped
// like torch_zip's resolves ('storage', <storage class>, key, location, numel)
// ids to storages (one per key, like an archive's records), so the tensor
// rebuild functions run against real bytes; an observer sees every event.
#include <map>
#include <string>

#include "ckpt/dtype.hpp"
#include "ckpt/storage.hpp"
#include "core/checked.hpp"
#include "fuzz_common.hpp"

namespace {

using namespace ckpt;

// Largest storage a persistent id may ask for, and all of them together: the
// harness stands in for an archive, whose records are bounded by the file
// size in real use.
constexpr uint64_t kMaxStorageBytes = uint64_t{1} << 20;
constexpr uint64_t kMaxTotalStorageBytes = uint64_t{64} << 20;

class StorageTable {
 public:
  Value operator()(const Value& pid, uint64_t offset) {
    auto fail = [&](const std::string& msg) { return FormatError(msg, ErrorContext{"<fuzz>", "data.pkl", offset}); };
    if (!pid.is_tuple()) throw fail("persistent id is not a tuple");
    const List& t = pid.as_tuple();
    if (t.size() != 5 || !t[0].is_string() || t[0].as_string() != "storage") throw fail("not a storage id");
    if (t[1].kind() != Value::Kind::Global) throw fail("storage type is not a global");
    const Global& type = t[1].as_global();
    DType dtype = DType::uint8;
    if (type.name != "UntypedStorage") {
      auto d = dtype_from_storage_name(type.name);
      if (!d) throw fail("unknown storage type");
      dtype = *d;
    }
    if (!t[2].is_string() || !t[3].is_string()) throw fail("key or location is not a string");
    if (!t[4].is_int() || t[4].as_int() < 0) throw fail("bad storage size");
    const std::string& key = t[2].as_string();
    if (auto it = cache_.find(key); it != cache_.end()) {
      if (it->second.dtype != dtype) throw fail("storage referenced with two dtypes");
      return Value(it->second);
    }
    uint64_t nbytes = checked_mul_size(static_cast<uint64_t>(t[4].as_int()), itemsize(dtype), "storage size");
    if (nbytes > kMaxStorageBytes || total_ + nbytes > kMaxTotalStorageBytes)
      throw LimitError("storages larger than the harness allows");
    total_ += nbytes;
    StorageValue sv;
    sv.storage = Storage::allocate(static_cast<size_t>(nbytes));
    for (size_t i = 0; i < nbytes; ++i) sv.storage.mutable_data()[i] = static_cast<std::byte>(i * 7 + 1);
    sv.dtype = dtype;
    sv.device = t[3].as_string();
    cache_.emplace(key, sv);
    return Value(std::move(sv));
  }

 private:
  std::map<std::string, StorageValue> cache_;
  uint64_t total_ = 0;
};

void decode(std::span<const std::byte> bytes, pickle::GlobalPolicy policy, bool inert_torch, bool count, bool numpy) {
  fuzz::run_expecting_errors([&] {
    StorageTable storages;
    fuzz::CountingObserver observer;
    pickle::Options o;
    o.policy = policy;
    o.persistent_load = [&storages](const Value& pid, uint64_t offset) { return storages(pid, offset); };
    o.observer = &observer;
    if (inert_torch)
      o.accept_inert = [](std::string_view module, std::string_view) { return module.starts_with("__torch__"); };
    o.numpy = numpy;
    o.file = "<fuzz>";
    o.record = "data.pkl";
    size_t consumed = 0;
    Value v = pickle::unpickle(bytes, o, count ? &consumed : nullptr);
    if (count && consumed > bytes.size()) __builtin_trap();  // consumed more than it was given
    fuzz::keep(fuzz::touch_tensors(v) + static_cast<unsigned>(observer.events()));
  });
}

// The plan of memo reads (pickle::Options::memo_plan) must not change what
// a pickle decodes to, nor any error but a LimitError (the plan stores less,
// so a budget may run out only without it).
std::string outcome(std::span<const std::byte> bytes, bool plan, bool& limited) {
  StorageTable storages;
  pickle::Options o;
  o.policy = pickle::GlobalPolicy::inspect;
  o.persistent_load = [&storages](const Value& pid, uint64_t offset) { return storages(pid, offset); };
  o.memo_plan = plan;
  o.file = "<fuzz>";
  o.record = "data.pkl";
  try {
    return "value: " + pickle::unpickle(bytes, o).repr();
  } catch (const LimitError& e) {
    limited = true;
    return e.what();
  } catch (const Error& e) {
    return e.what();
  }
}

void compare_memo_plans(std::span<const std::byte> bytes) {
  bool limited = false;
  const std::string with = outcome(bytes, true, limited);
  const std::string without = outcome(bytes, false, limited);
  if (!limited && with != without) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = fuzz::as_bytes(data, size);
  compare_memo_plans(bytes);
  decode(bytes, pickle::GlobalPolicy::weights_only, /*inert_torch=*/true, /*count=*/false, /*numpy=*/true);
  decode(bytes, pickle::GlobalPolicy::inspect, false, false, false);
  decode(bytes, pickle::GlobalPolicy::inspect, false, true, true);
  return 0;
}
