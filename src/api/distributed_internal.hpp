// Private: the distributed save with the file system as a parameter (fault
// injection in tests), and the names of DCP data files.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ckpt/distributed.hpp"
#include "io/file.hpp"

namespace ckpt::detail {

// ckpt::save_distributed through `env`.
void save_distributed(io::Env& env, const std::string& dir, const DistributedState& state, Comm& comm,
                      const DistributedSaveOptions& options);

// `n` of a DCP data file name `__<rank>_<n>.distcp` (torch's FileSystemWriter
// names, and ckpt's); nullopt for any other name.
std::optional<uint64_t> dcp_data_file_number(const std::string& name);

}  // namespace ckpt::detail
