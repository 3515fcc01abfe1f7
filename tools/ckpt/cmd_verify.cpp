// ckpt verify FILE — check structure, bounds and CRCs (of every record of a
// distributed checkpoint directory too).
#include <cstdio>
#include <filesystem>

#include "api/open_internal.hpp"
#include "ckpt/distributed.hpp"
#include "ckpt/error.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "container/zip.hpp"
#include "formats/torch_zip.hpp"

namespace ckpt::cli {
namespace {

// A torch.distributed.checkpoint directory (one holding a `.metadata`):
// the metadata validated, every record's archive and CRCs checked.
int run_verify_dcp(const std::string& dir) {
  try {
    DistributedReader r(dir);
    const size_t records = r.verify();
    std::printf("%s: ok (dcp, %zu items, %zu records, CRCs match)\n", dir.c_str(), r.items().size(), records);
    return kExitOk;
  } catch (Error& e) {
    if (dynamic_cast<IoError*>(&e)) throw;
    std::fprintf(stderr, "ckpt: error: damaged: %s\n", e.what());
    return kExitNegative;
  }
}

int run_verify(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(std::filesystem::path(path) / ".metadata", ec)) return run_verify_dcp(path);
  auto file = detail::open_for_load(path, true);
  Format format = Format::unknown;
  try {
    format = detail::detect(file);
    switch (format) {
      case Format::torch_zip:
      case Format::torchscript: {
        zip::ZipReader z(file);
        formats::verify_torch_zip(z);
        std::printf("%s: ok (%s, %zu records, CRCs match)\n", path.c_str(), std::string(format_name(format)).c_str(),
                    z.entries().size());
        return kExitOk;
      }
      default: {
        LoadOptions opts;
        opts.weights_only = false;
        opts.mmap = true;
        (void)detail::load_file(file, opts, nullptr, nullptr);
        std::printf("%s: ok (%s)\n", path.c_str(), std::string(format_name(format)).c_str());
        return kExitOk;
      }
    }
  } catch (Error& e) {
    e.add_context(ErrorContext{path, "", std::nullopt});
    // Unreadable, or not a checkpoint at all: an error (2), not damage (1).
    if (dynamic_cast<IoError*>(&e)) throw;
    if (format == Format::unknown) {
      std::byte head[4] = {};
      if (file->size() >= 4) file->read_at(0, head);
      if (!zip::looks_like_zip(head)) throw;  // a zip whose structure is damaged is damage
    }
    std::fprintf(stderr, "ckpt: error: damaged: %s\n", e.what());
    return kExitNegative;
  }
}

}  // namespace

void register_verify(CLI::App& app, int* exit_code) {
  auto paths = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = app.add_subcommand("verify", "Check a checkpoint's structure, bounds and CRCs");
  cmd->add_option("FILE", *paths, "Checkpoint files (or torch.distributed.checkpoint directories)")->required();
  cmd->callback([paths, exit_code] { *exit_code = for_each_file(*paths, run_verify); });
}

}  // namespace ckpt::cli
