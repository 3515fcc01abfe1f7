// Private: opening a CheckpointManager over a caller's io::Env, so that tests
// can inject faults (ENOSPC, EIO) into every write, fsync, rename and
// directory sync the manager makes. Reads, directory listings and the lock
// go to the real file system.
#pragma once

#include <string>

#include "ckpt/manager.hpp"
#include "io/file.hpp"

namespace ckpt {

struct ManagerAccess {
  // `env` must outlive the manager.
  static CheckpointManager open(std::string dir, ManagerOptions options, io::Env& env);
};

}  // namespace ckpt
