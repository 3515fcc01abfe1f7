// ckpt/verify.hpp — checking a checkpoint without keeping its data.
//
//   ckpt::VerifyReport r = ckpt::verify("model.pt");
//   if (!r.ok) std::fprintf(stderr, "damaged: %s\n", r.problem.c_str());
//
// A torch zip or TorchScript archive: its structure, every record's bounds
// and CRC-32, and the pickle's references to its storages. A
// torch.distributed.checkpoint directory (or its `.metadata`): the metadata
// and every record of every `.distcp` file. Any other format: a full load
// with weights_only = false (unknown classes become inert objects; nothing is
// executed) into memory mapped views, dropped afterwards. Thread-safe.
#pragma once

#include <cstddef>
#include <string>

#include "ckpt/options.hpp"

namespace ckpt {

struct VerifyReport {
  Format format = Format::unknown;
  bool ok = false;       // false: the file is a checkpoint and it is damaged
  std::string problem;   // when !ok: what is damaged, where (file, record, offset)
  size_t records = 0;    // zip records / DCP records whose CRCs were checked
  size_t items = 0;      // DCP: the items its metadata lists
};

// Damage is reported, not thrown. Throws ckpt::IoError when the path cannot be
// read and ckpt::FormatError when it is no checkpoint at all (no format ckpt
// knows, and not a zip archive).
VerifyReport verify(const std::string& path);

}  // namespace ckpt
