// ckpt/distributed.hpp — distributed checkpoints in torch.distributed.checkpoint's format.
//
//   // Reading: one process, the whole state (what dcp_to_torch_save makes).
//   ckpt::Value sd = ckpt::load("ckpt_dir/");          // detected from .metadata
//   // Reading: each rank its own part, whatever the layout it was saved with.
//   ckpt::DistributedReader r("ckpt_dir/", comm);
//   ckpt::Tensor mine = r.read("w", {row0, 0}, {rows, cols});
//
//   // Writing: every rank passes what it holds.
//   ckpt::DistributedState st;
//   st.add_shard("w", local_rows, {1000, 64}, {row0, 0});  // a shard of a global tensor
//   st.add("bias", bias);                                  // replicated: written once
//   st.add("step", ckpt::Value(int64_t{1200}));            // any picklable value
//   ckpt::save_distributed("ckpt_dir/", st, comm);
//
// The directory is what torch.distributed.checkpoint's FileSystemWriter
// writes (docs/distributed.md): `.metadata`, a pickle of
// torch.distributed.checkpoint.metadata.Metadata, and one data file per rank,
// `__<rank>_<n>.distcp`, holding one torch.save record per tensor chunk or
// value. torch's dcp.load reads what ckpt writes and ckpt reads what
// dcp.save writes (torch 2.x, FileSystemWriter, torch_save serialization).
//
// Saves are atomic at the checkpoint level: all ranks agree the plan is valid
// (shards tile, dtypes and shapes agree) before the directory is touched;
// every rank writes and fsyncs its data file under a name no file in the
// directory has (<n> = 0 in a fresh directory, higher over an existing
// checkpoint); all ranks agree that every write succeeded
// (Comm::all_true); only then rank 0 writes `.metadata` (temporary file,
// fsync, rename: the commit) and removes the DCP data files the new
// `.metadata` does not name. A save that fails or is killed at any point
// leaves the previous checkpoint (or, past the commit, the new one) complete
// and loadable; a directory without `.metadata` is never read as one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/load.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

// ---------------------------------------------------------------- communication

// The collectives a distributed save/load needs, over whatever runs the job
// (MPI: ckpt/mpi.hpp). Every rank must make the same calls in the same order.
// Implementations throw ckpt::Error when the transport fails.
class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void barrier() = 0;
  // `bytes` of rank `root` reach every rank (replacing theirs).
  virtual void broadcast(std::string& bytes, int root) = 0;
  // Every rank's `bytes`, by rank, at `root` (empty elsewhere).
  virtual std::vector<std::string> gather(const std::string& bytes, int root) = 0;
  // Every rank's `bytes`, by rank, at every rank.
  virtual std::vector<std::string> allgather(const std::string& bytes) = 0;
  // Logical AND of `ok` over all ranks (the collective success check).
  virtual bool all_true(bool ok) = 0;
};

// One process: rank 0 of 1.
class SingleProcessComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void barrier() override {}
  void broadcast(std::string&, int) override {}
  std::vector<std::string> gather(const std::string& bytes, int) override { return {bytes}; }
  std::vector<std::string> allgather(const std::string& bytes) override { return {bytes}; }
  bool all_true(bool ok) override { return ok; }
};

// ---------------------------------------------------------------- reading

// Whether `dir` holds a DCP checkpoint: a `.metadata` that decodes as a
// torch.distributed.checkpoint Metadata (decided from its bytes).
bool is_distributed_checkpoint(const std::string& dir);

class DistributedReader {
 public:
  struct Item {
    std::string name;         // flattened name, "model.layer.weight"
    bool is_tensor = false;   // else a pickled value
    DType dtype = DType::float32;
    std::vector<int64_t> shape;
    size_t chunks = 0;        // stored chunks (tensors)
  };

  // Reads and validates `.metadata` (chunks tile every tensor, records name
  // plain files inside `dir`). Throws ckpt::FormatError / IoError naming the
  // file and the item. `options`: weights_only and mmap as for ckpt::load.
  explicit DistributedReader(const std::string& dir, const LoadOptions& options = {});
  // The same, with rank 0 reading `.metadata` and broadcasting it.
  DistributedReader(const std::string& dir, Comm& comm, const LoadOptions& options = {});
  ~DistributedReader();
  DistributedReader(DistributedReader&&) noexcept;
  DistributedReader& operator=(DistributedReader&&) noexcept;

  const std::vector<Item>& items() const noexcept;
  const Item& item(const std::string& name) const;  // throws ckpt::TypeError when absent

  // The whole tensor, assembled from its chunks.
  Tensor read(const std::string& name) const;
  // The region [offsets, offsets + sizes) of a tensor, as a new contiguous
  // tensor: only the chunks that intersect it are read. Throws ckpt::TypeError
  // when the region is outside the tensor.
  Tensor read(const std::string& name, const std::vector<int64_t>& offsets,
              const std::vector<int64_t>& sizes) const;
  // A non-tensor value (a tensor item gives its whole tensor).
  Value read_value(const std::string& name) const;
  // Everything, nested as the saved state dict was (planner_data), as
  // torch.distributed.checkpoint.format_utils.dcp_to_torch_save makes it.
  Value consolidate() const;

  // Reads every record: each must be an intact torch.save archive (structure
  // and CRC32s) and a chunk must hold a tensor of the dtype and shape
  // .metadata gives. Returns the number of records. Throws ckpt::Error naming
  // the file, the item and the offset of the first damage (`ckpt verify DIR`).
  size_t verify() const;

  // Record bytes read so far (for tests and benchmarks).
  uint64_t bytes_read() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------- writing

// What one rank holds of the state to save.
class DistributedState {
 public:
  // A tensor every rank holds whole (replicated: written by one rank), or a
  // non-tensor value (int, float, str, list, ... anything ckpt::save writes).
  // A dict is flattened into its items as torch's DCP does ("opt.lr").
  void add(const std::string& name, Value value);
  // This rank's shard of a global tensor of shape `global_shape`, at
  // `offsets` (per dim). The shards of all ranks must tile the tensor.
  void add_shard(const std::string& name, Tensor local, std::vector<int64_t> global_shape,
                 std::vector<int64_t> offsets);

  struct Entry {
    std::string name;
    std::vector<Value> path;  // planner_data: keys from the root
    Value value;              // Tensor for tensors
    bool shard = false;
    std::vector<int64_t> global_shape;
    std::vector<int64_t> offsets;
  };
  const std::vector<Entry>& entries() const noexcept { return entries_; }

 private:
  void add_flat(const std::string& name, std::vector<Value> path, Value value);
  std::vector<Entry> entries_;
};

struct DistributedSaveOptions {
  bool fsync = true;  // fsync data files, .metadata and the directory
};

// Saves this rank's part; collective (every rank of `comm` calls it with the
// same `dir`). Returns on every rank once `.metadata` is in place; throws
// ckpt::Error on every rank when any rank failed: shards that do not tile
// (ckpt::TypeError, before anything is written), or a write that failed (the
// checkpoint `dir` held before, if any, is unchanged; the new data files are
// removed). A `dir` holding a checkpoint is overwritten: the new data files
// get new names, `.metadata` is replaced last (atomically), then the old data
// files are removed. Only files named like DCP data files (`__<r>_<n>.distcp`)
// and this save's temporaries are ever removed.
void save_distributed(const std::string& dir, const DistributedState& state, Comm& comm,
                      const DistributedSaveOptions& options = {});
// One process (world size 1).
void save_distributed(const std::string& dir, const DistributedState& state,
                      const DistributedSaveOptions& options = {});
// A whole state dict (or any dict tree) from one process, e.g. for
// `ckpt convert model.pt DIR --to dcp`.
void save_distributed(const std::string& dir, const Value& state_dict,
                      const DistributedSaveOptions& options = {});

}  // namespace ckpt
