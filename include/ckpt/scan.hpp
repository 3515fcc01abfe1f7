// ckpt/scan.hpp — finding what a checkpoint's pickles would import and call.
//
// scan_file() runs every pickle in a file through the same non-executing
// unpickler that ckpt::load uses (in inspection mode: nothing is imported or
// executed) and reports each global the pickle names and each call it makes
// (REDUCE, INST, OBJ, NEWOBJ, NEWOBJ_EX, BUILD, extension codes), with the
// record it is in and the byte offset of the opcode. For zip archives every
// record that is named *.pkl or whose bytes start like a pickle is scanned,
// not only data.pkl. Every finding is classified:
//   - allowed:   on the weights_only allow-list (what ckpt::load accepts);
//   - known:     outside the allow-list but a known inert data class
//                (numpy arrays and dtypes, argparse.Namespace, collections,
//                Lightning / transformers / omegaconf config classes,
//                TorchScript __torch__ classes, ...);
//   - dangerous: on the deny-list (os, subprocess, builtins.eval, ...);
//   - unknown:   on no list. Treated as dangerous: scanners are bypassed
//                through the modules nobody listed.
// and a file gets one verdict (see docs/security.md). A damaged file still
// reports what was seen before the damage. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/load.hpp"

namespace ckpt {

enum class ScanCategory { allowed, known, dangerous, unknown };
std::string_view scan_category_name(ScanCategory c) noexcept;  // "allowed", "known", "dangerous", "unknown"

// The category of a global (module and attribute as the pickle names them;
// Python 2 names such as __builtin__ are mapped first).
ScanCategory classify_global(std::string_view module, std::string_view name);

struct ScanFinding {
  std::string record;  // zip entry, legacy pickle ("object pickle"), tar member; "" for a bare pickle file
  uint64_t offset = 0; // byte offset of the opcode inside that record's pickle
  std::string op;      // "global", "reduce", "build", "newobj", "newobj_ex", "inst", "obj", "ext"
  std::string module;  // "" when the callee is not a global (e.g. REDUCE on a str)
  std::string name;
  ScanCategory category = ScanCategory::unknown;
};

enum class ScanVerdict {
  safe,              // only what weights_only allows
  unsafe_but_known,  // also known inert classes; nothing dangerous
  dangerous,         // a dangerous or unknown global or call (even in a damaged file)
  error,             // unreadable or damaged, and nothing dangerous seen before the damage
};
std::string_view scan_verdict_name(ScanVerdict v) noexcept;  // "safe", "unsafe-but-known", "dangerous", "error"

struct ScanReport {
  std::string path;
  Format format = Format::unknown;     // Format::unknown also for a bare pickle file
  bool bare_pickle = false;            // the file itself is one pickle (pickle.dump output)
  bool unrecognized = false;           // neither a checkpoint format nor a pickle (an error)
  std::vector<std::string> pickles;    // the records decoded as pickles, in scan order
  std::vector<ScanFinding> findings;   // in scan order
  uint64_t findings_omitted = 0;       // past the per-file cap (100,000), counted only
  std::vector<std::string> errors;     // each rendered like ckpt::Error::what()
  ScanVerdict verdict = ScanVerdict::safe;
};

struct ScanOptions {
  // Report every `allowed` finding too (a torch checkpoint has thousands of
  // _rebuild_tensor_v2 calls). When false, allowed findings are counted in
  // the verdict but left out of ScanReport::findings.
  bool include_allowed = false;
};

// Scans one file; never throws for file contents (errors go to the report).
ScanReport scan_file(const std::string& path, const ScanOptions& options = {});
// The same for bytes in memory; `name` is used as the report's path.
ScanReport scan_bytes(std::span<const std::byte> bytes, const std::string& name, const ScanOptions& options = {});

// Files and directories: a directory is walked recursively in sorted order,
// following symbolic links (a Hugging Face cache is snapshots/<rev>/ of links
// into blobs/). Each real directory is entered once (device + inode, so link
// cycles end) and each real file is scanned once, reported under a link's
// name when it has one (snapshots/<rev>/model.bin, not blobs/<sha>).
// A path that cannot be read gives a report with an error. Files found in a
// directory that are empty or `unrecognized` (config.json, README.md) are left
// out; named explicitly, they are reported as errors. A directory holding no
// checkpoint or pickle at all gives one report with an error (exit 2).
std::vector<ScanReport> scan_paths(const std::vector<std::string>& paths, const ScanOptions& options = {});

// The exit code picklescan uses: 1 if any report is dangerous, else 2 if any
// has an error, else 0.
int scan_exit_code(const std::vector<ScanReport>& reports) noexcept;

// The JSON document `ckpt scan --json` prints (schema in docs/security.md).
std::string scan_reports_json(const std::vector<ScanReport>& reports);

}  // namespace ckpt
