#include "ckpt/verify.hpp"

#include <filesystem>
#include <optional>

#include "api/open_internal.hpp"
#include "ckpt/distributed.hpp"
#include "ckpt/error.hpp"
#include "container/zip.hpp"
#include "formats/torch_zip.hpp"

namespace ckpt {

namespace {

// An error that is not an IoError is damage: reported in `out`, not thrown.
void damaged(VerifyReport& out, const Error& e) {
  if (dynamic_cast<const IoError*>(&e)) throw;
  out.ok = false;
  out.problem = e.what();
}

}  // namespace

VerifyReport verify(const std::string& path) {
  VerifyReport out;
  // A directory with a `.metadata` is a DCP even when that file is too damaged to say so.
  std::error_code ec;
  std::string dir = std::filesystem::is_regular_file(std::filesystem::path(path) / ".metadata", ec)
                        ? path
                        : detail::distributed_checkpoint_dir(path);
  if (!dir.empty()) {
    out.format = Format::dcp;
    try {
      DistributedReader r(dir);
      out.records = r.verify();
      out.items = r.items().size();
      out.ok = true;
    } catch (const Error& e) {
      damaged(out, e);
    }
    return out;
  }
  auto file = detail::open_for_load(path, /*mmap=*/true);
  try {
    out.format = detail::detect(file);
    if (out.format == Format::torch_zip || out.format == Format::torchscript) {
      zip::ZipReader z(file);
      formats::verify_torch_zip(z);
      out.records = z.entries().size();
    } else {
      LoadOptions opts;
      opts.weights_only = false;
      opts.mmap = true;
      (void)detail::load_file(file, opts, nullptr, nullptr);
    }
    out.ok = true;
  } catch (Error& e) {
    e.add_context(ErrorContext{path, "", std::nullopt});
    if (out.format == Format::unknown) {
      // Not a checkpoint at all is an error; a zip whose structure is damaged is damage.
      std::byte head[4] = {};
      if (file->size() >= 4) file->read_at(0, head);
      if (!zip::looks_like_zip(head) && !dynamic_cast<IoError*>(&e)) throw;
    }
    damaged(out, e);
  }
  return out;
}

}  // namespace ckpt
