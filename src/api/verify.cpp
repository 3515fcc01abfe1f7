#include "ckpt/verify.hpp"

#include <optional>

#include "api/resolve.hpp"
#include "api/verify_internal.hpp"
#include "ckpt/error.hpp"
#include "container/zip.hpp"
#include "formats/dcp_reader.hpp"
#include "formats/detect.hpp"
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

void detail::verify_torch_archive(const std::shared_ptr<io::RandomAccessFile>& file) {
  zip::ZipReader z(file);
  formats::verify_torch_zip(z);
}

VerifyReport verify(const std::string& path) {
  VerifyReport out;
  // A directory with a `.metadata` is a DCP even when that file is too damaged to say so.
  const bool has_metadata = io::status(formats::dcp::metadata_path(path)).regular();
  const std::string dir = has_metadata ? path : detail::dcp_dir(path);
  if (!dir.empty()) {
    out.format = Format::dcp;
    try {
      formats::dcp::Reader r(dir, LoadOptions{}, formats::dcp::read_metadata_bytes(dir));
      out.records = r.verify();
      out.items = r.metadata().entries.size();
      out.ok = true;
    } catch (const Error& e) {
      damaged(out, e);
    }
    return out;
  }
  auto file = formats::open_for_load(path, /*mmap=*/true);
  try {
    out.format = formats::detect(file);
    if (out.format == Format::torch_zip || out.format == Format::torchscript) {
      zip::ZipReader z(file);
      formats::verify_torch_zip(z);
      out.records = z.entries().size();
    } else {
      LoadOptions opts;
      opts.weights_only = false;
      opts.mmap = true;
      (void)formats::load_any(file, opts, nullptr, nullptr);
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
