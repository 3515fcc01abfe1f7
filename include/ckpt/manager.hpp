// ckpt/manager.hpp — durable training checkpoints in one directory.
//
//   ckpt::CheckpointManager mgr("runs/exp1", {.keep_last = 3, .keep_best = 2,
//                                             .metric = "val_loss", .save_every = 1000});
//   if (auto r = mgr.resume()) start_step = r->info.step + 1;   // newest checkpoint that verifies
//   ...
//   mgr.save_async(step, state, {{"val_loss", loss}});           // snapshot, write in background
//
// A CheckpointManager owns one directory of checkpoint files (torch zip
// archives that torch.load reads) plus three small files of its own: the
// manifest (manifest.json: step, metrics, size and CRC32 of every
// checkpoint), the `last` pointer (the name of the newest checkpoint) and
// `.lock`. Every file is written to a temporary, fsynced, renamed into place
// and the directory fsynced, so after a crash — a kill, OOM, power loss — the
// directory holds only complete checkpoints, and resume() returns the newest
// one whose bytes still match the manifest. Retention policies (keep the
// last N, the best K by a metric, every Mth step forever) delete old files
// after each save, but never the only valid checkpoint nor the one `last`
// names. See docs/manager.md for the layout, the manifest format and what
// happens at each point of a crash.
//
// Ownership: save() and save_async() never keep references to the caller's
// Value; save_async() copies tensor bytes into a staging pool the manager
// owns (bounded by ManagerOptions::staging_limit), so the caller may change
// its tensors as soon as it returns. Values returned by load_*() and
// resume() belong to the caller.
//
// Threads and processes: every method is safe to call from several threads
// (saves run one at a time, in the order they are made). One process at a time may
// open a directory for writing: a second writer — in this process or another
// — gets a ckpt::Error naming the directory (an advisory flock on
// `dir/.lock`). Any number of read_only managers may open it alongside; they
// never see a partial checkpoint, and call refresh() to see newer saves.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/checksum.hpp"  // crc32_hex: CheckpointInfo::crc32 as the manifest writes it
#include "ckpt/load.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

// Scalars recorded with a checkpoint ("val_loss", "epoch", ...). They appear
// in the manifest, select the best checkpoints and fill the file name.
using Metrics = std::map<std::string, double>;

enum class MetricMode : uint8_t {
  min,  // lower is better (a loss)
  max,  // higher is better (an accuracy)
};

// What a second save_async() does while an earlier one is still writing.
enum class AsyncPolicy : uint8_t {
  wait,      // block until the earlier save has finished, then snapshot
  coalesce,  // snapshot now and queue it; a newer save_async() replaces a queued,
             // not yet started one (the replaced step is skipped and logged)
};

// save() / save_async(): honour save_every, or save regardless (on demand).
enum class SaveTrigger : uint8_t { schedule, force };

// CheckpointManager::prune.
struct PruneOptions {
  // Delete nothing; return what would be deleted.
  bool dry_run = false;
};

struct ManagerOptions {
  // ---- retention (applied after each successful save). Retention is off —
  // every checkpoint is kept — while keep_last and keep_best are both 0.
  // A checkpoint survives if any rule keeps it.
  size_t keep_last = 0;          // the N most recently saved checkpoints
  size_t keep_best = 0;          // the K best by `metric` (needs `metric`)
  std::string metric = {};       // the metric keep_best and best() rank by
  MetricMode mode = MetricMode::min;
  int64_t keep_every = 0;        // keep checkpoints whose step % keep_every == 0 forever (0: off)

  // ---- when save() saves: when step % save_every == 0 (0 or 1: every call),
  // or when called with SaveTrigger::force.
  int64_t save_every = 0;

  // ---- file names. Fields: {step} and any metric, as {name}, {name:0Nd}
  // (integer, zero-padded to N digits) or {name:.Nf} (N decimals); "{{" and
  // "}}" are literal braces. A name already taken gets "-v1", "-v2"... before
  // the extension. Must not contain '/' nor start with '.'.
  std::string filename = "step={step:08d}.pt";

  // ---- asynchronous saves
  // Bytes of tensor data save_async() may hold in its staging pool (0: no
  // limit). A state larger than this is refused with ckpt::LimitError (nothing
  // is staged; save() still works); while earlier snapshots hold the pool,
  // save_async() blocks until the background write frees their buffers.
  size_t staging_limit = 0;
  AsyncPolicy async_policy = AsyncPolicy::wait;

  // ---- opening
  // Read only: no lock, no clean-up, no writes; save() throws.
  bool read_only = false;

  // Receives one line per event worth knowing: a skipped damaged checkpoint,
  // an orphaned temporary removed, a file adopted, a coalesced save, a
  // background error during destruction. Empty: written to stderr as
  // "ckpt: <dir>: <message>". Called from the caller's thread or the
  // background writer, one call at a time, possibly with the manager's lock
  // held: it must not call back into the manager.
  std::function<void(const std::string& message)> log = {};
};

// One checkpoint as the manifest records it.
struct CheckpointInfo {
  int64_t step = 0;
  std::string file;       // name inside the directory
  std::string path;       // directory / file
  Metrics metrics;
  uint64_t size = 0;      // bytes
  uint32_t crc32 = 0;     // CRC-32 of the whole file
  bool pinned = false;    // kept forever (keep_every)
  // The file exists with the recorded size and, if it was read in this
  // session, its CRC matched. `problem` says why not when false.
  bool valid = true;
  std::string problem;
};

// A loaded checkpoint.
struct Checkpoint {
  CheckpointInfo info;
  Value value;
};

class CheckpointManager {
 public:
  // Opens (creating it unless read_only) the directory and reconciles the
  // manifest with what is on disk: temporaries left by a crash are removed,
  // checkpoints whose files are gone are dropped, checkpoint files the
  // manifest does not know are verified and adopted when their name matches
  // the template (which must contain {step} for that). Throws ckpt::Error
  // when another writer holds the directory, ckpt::IoError when it cannot be
  // created or read, ckpt::Error for a bad filename template.
  explicit CheckpointManager(std::string dir, ManagerOptions options = {});
  // Waits for a background save to finish; its error, if any, is logged.
  // Never throws.
  ~CheckpointManager();
  CheckpointManager(CheckpointManager&&) noexcept;
  CheckpointManager& operator=(CheckpointManager&&) noexcept;
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // Whether save(step, ...) would save now (save_every).
  bool should_save(int64_t step) const;

  // Writes `state` as checkpoint `step` when save_every says so (or `trigger`
  // is force) and applies retention. Returns whether it saved. All or
  // nothing: on failure it throws (ckpt::IoError for the file system) and
  // the directory keeps its previous checkpoints, with no temporary left.
  // Waits for a background save first and rethrows its error, if any (then
  // this state is not saved).
  bool save(int64_t step, const Value& state, const Metrics& metrics = {},
            SaveTrigger trigger = SaveTrigger::schedule);

  // As save(), but returns once the tensors are copied into the staging
  // pool; a background thread writes the file. At most one save is in flight
  // (see AsyncPolicy). An error from the background write is thrown by the
  // next save(), save_async() or wait().
  bool save_async(int64_t step, const Value& state, const Metrics& metrics = {},
                  SaveTrigger trigger = SaveTrigger::schedule);
  // Blocks until no save is queued or in flight; throws its error, if any.
  void wait();

  // Newest valid checkpoint (most recently saved), best valid one by
  // `metric` (ties: the newer), all known checkpoints oldest first.
  std::optional<CheckpointInfo> latest() const;
  std::optional<CheckpointInfo> best() const;
  std::vector<CheckpointInfo> list() const;

  // Reads every valid checkpoint whole and checks its size and CRC-32 against
  // the manifest; one that differs, or cannot be read, is marked invalid with
  // the reason in `problem` (as a damaged load would mark it). `progress`, when
  // given, is called after each chunk read with the checkpoint being read and
  // the bytes just read. Returns list() afterwards. Allowed on read_only
  // managers (the marks are not written anywhere).
  std::vector<CheckpointInfo> verify(
      const std::function<void(const CheckpointInfo& checkpoint, uint64_t bytes)>& progress = {});

  // Loads latest() / best() after checking size and CRC against the
  // manifest. Throws ckpt::Error when there is none and ckpt::FormatError
  // when its bytes do not match (resume() skips such files instead).
  Value load_latest(const LoadOptions& options = {});
  Value load_best(const LoadOptions& options = {});

  // The newest checkpoint whose size and CRC match the manifest and that
  // loads; damaged or unreadable ones are skipped with a logged reason and
  // marked invalid. std::nullopt when there is none (a fresh start).
  std::optional<Checkpoint> resume(const LoadOptions& options = {});

  // Applies the retention policy now, as after a save (e.g. with a stricter
  // policy than the run used); returns the checkpoints it deleted. With
  // dry_run, deletes nothing and returns what it would delete (allowed on
  // read_only managers). Waits for a background save first.
  std::vector<CheckpointInfo> prune(const PruneOptions& options = {});

  // Re-reads the manifest and the directory (read_only managers: to see
  // checkpoints saved since opening).
  void refresh();

  const std::string& directory() const noexcept;

 private:
  struct Impl;
  explicit CheckpointManager(std::unique_ptr<Impl> impl);
  friend struct ManagerAccess;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckpt
