// fuzz_dcp_metadata: a torch.distributed.checkpoint `.metadata` on raw bytes:
// the pickle decoded in inspection mode, then every dataclass validated
// (chunks inside their tensor, no overlap, full cover, one record per chunk,
// plain file names). A validated entry must hold what the validator promised,
// and writing it back must give a pickle that validates to the same entries.
#include "formats/dcp.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  auto bytes = fuzz::as_bytes(data, size);
  fuzz::keep(formats::dcp::is_metadata(bytes) ? 1u : 0u);
  fuzz::run_expecting_errors([&] {
    formats::dcp::Metadata md = formats::dcp::parse_metadata(bytes, "<fuzz>");
    unsigned acc = 0;
    for (const auto& e : md.entries) {
      if (e.is_tensor && !formats::dcp::check_tiling(e.size, e.chunks).empty()) __builtin_trap();
      for (const auto& c : e.chunks)
        if (c.storage.relative_path.empty() || c.storage.relative_path.find('/') != std::string::npos)
          __builtin_trap();
      acc += static_cast<unsigned>(e.fqn.size() + e.chunks.size());
    }
    const std::string again = formats::dcp::write_metadata(md, "<fuzz>");
    formats::dcp::Metadata back =
        formats::dcp::parse_metadata(std::as_bytes(std::span<const char>(again)), "<fuzz>");
    if (back.entries.size() != md.entries.size()) __builtin_trap();
    for (size_t i = 0; i < md.entries.size(); ++i)
      if (back.entries[i].fqn != md.entries[i].fqn || back.entries[i].chunks.size() != md.entries[i].chunks.size())
        __builtin_trap();
    fuzz::keep(acc);
  });
  return 0;
}
