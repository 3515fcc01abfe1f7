// ckpt verify FILE — check structure, bounds and CRCs (of every record of a
// distributed checkpoint directory too).
#include <cstdio>

#include "ckpt/verify.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace ckpt::cli {
namespace {

int run_verify(const std::string& path) {
  const VerifyReport r = verify(path);
  if (!r.ok) {
    std::fprintf(stderr, "ckpt: error: damaged: %s\n", r.problem.c_str());
    return kExitNegative;
  }
  const std::string format(format_name(r.format));
  if (r.format == Format::dcp)
    std::printf("%s: ok (dcp, %zu items, %zu records, CRCs match)\n", path.c_str(), r.items, r.records);
  else if (r.records)
    std::printf("%s: ok (%s, %zu records, CRCs match)\n", path.c_str(), format.c_str(), r.records);
  else
    std::printf("%s: ok (%s)\n", path.c_str(), format.c_str());
  return kExitOk;
}

}  // namespace

void register_verify(CLI::App& app, int* exit_code) {
  auto paths = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = app.add_subcommand("verify", "Check a checkpoint's structure, bounds and CRCs");
  cmd->add_option("FILE", *paths, "Checkpoint files (or torch.distributed.checkpoint directories)")->required();
  cmd->callback([paths, exit_code] { *exit_code = for_each_file(*paths, run_verify); });
}

}  // namespace ckpt::cli
