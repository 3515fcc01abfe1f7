// Distributed checkpoints (ckpt/distributed.hpp): torch.distributed.checkpoint
// directories read and written; ranks simulated by threads (dcp_fixture.hpp).
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "ckpt/distributed.hpp"
#include "ckpt/error.hpp"
#include "ckpt/load.hpp"
#include "formats/dcp.hpp"
#include "pickle/pickler.hpp"
#include "pickle/unpickler.hpp"
#include "unit/dcp_fixture.hpp"
#include "unit/test_util.hpp"

namespace fs = std::filesystem;
using namespace ckpt;
using namespace ckpt::dcp_fixture;
using ckpt::testing::data_path;
using ckpt::testing::slurp;
using ckpt::testing::TempDir;
using ckpt::testing::write_file;

namespace {

// Runs fn(rank, comm) on `world` threads; rethrows the first failure.
template <class Fn>
void run_ranks(int world, Fn fn) {
  ThreadGroup group(world);
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      ThreadComm comm(group, r);
      try {
        fn(r, comm);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// A directory torch 2.x wrote with 2 gloo ranks (tests/data/dcp/make_dcp_fixture.py):
// consolidated, it is what torch's own dcp_to_torch_save wrote beside it.
TEST(Distributed, ReadsTorchDirectoryAsDcpToTorchSave) {
  const std::string dir = data_path("dcp/torch2_w2");
  ASSERT_TRUE(is_distributed_checkpoint(dir));
  EXPECT_EQ(detect_format(data_path("dcp/torch2_w2.pt")), Format::torch_zip);
  Value got = load(dir);
  Value want = load(data_path("dcp/torch2_w2.pt"));
  EXPECT_TRUE(got == want) << got.repr() << "\n" << want.repr();
  DistributedReader r(dir);
  const auto& row = r.item("row");
  EXPECT_TRUE(row.is_tensor);
  EXPECT_EQ(row.chunks, 2u);
  // A region inside one chunk reads only that chunk's record; the whole tensor both.
  formats::dcp::Metadata md = formats::dcp::parse_metadata(
      std::as_bytes(std::span<const char>(slurp(dir + "/.metadata"))), dir + "/.metadata");
  ASSERT_EQ(md.entries[0].fqn, "row");
  const auto& chunks = md.entries[0].chunks;
  ASSERT_EQ(chunks.size(), 2u);
  ASSERT_EQ(chunks[0].offsets, (std::vector<int64_t>{0, 0}));
  Tensor part = r.read("row", {0, 0}, {2, row.shape[1]});
  EXPECT_EQ(r.bytes_read(), chunks[0].storage.length);
  EXPECT_TRUE(part.equal(region(want.as_dict().at(Value("row")).as_tensor(), {0, 0}, {2, row.shape[1]})));
  (void)r.read("row");
  EXPECT_EQ(r.bytes_read(), 2 * chunks[0].storage.length + chunks[1].storage.length);
  // the .metadata file itself names the checkpoint too
  EXPECT_TRUE(load(dir + "/.metadata") == want);
}

TEST(Distributed, SaveNLoadMThreads) {
  for (int n = 1; n <= 4; ++n) {
    TempDir tmp;
    const std::string dir = tmp.path() + "/ckpt";
    run_ranks(n, [&](int rank, Comm& comm) { save_distributed(dir, rank_state(rank, n), comm); });
    ASSERT_TRUE(is_distributed_checkpoint(dir)) << n;
    // replicated items are written once, by one rank: every record appears once
    formats::dcp::Metadata md = formats::dcp::parse_metadata(
        std::as_bytes(std::span<const char>(slurp(dir + "/.metadata"))), dir + "/.metadata");
    size_t records = 0;
    for (const auto& e : md.entries) records += e.is_tensor ? e.chunks.size() : 1;
    // row, col and grid in n chunks each (grid in 2x2 blocks for 4), 7 whole items once
    EXPECT_EQ(records, 7u + 3u * static_cast<size_t>(n)) << n;
    for (int m = 1; m <= 4; ++m)
      run_ranks(m, [&](int rank, Comm& comm) {
        DistributedReader r(dir, comm);
        auto bad = check_load(r, rank, m, full_state());
        EXPECT_TRUE(bad.empty()) << "saved by " << n << ", rank " << rank << " of " << m << ": " << bad.front();
      });
    // consolidated: nested as saved
    Value all = load(dir);
    EXPECT_TRUE(all.as_dict().at(Value("opt")).as_dict().at(Value("betas")) ==
                Value::tuple({Value(0.9), Value(0.999)}));
    EXPECT_TRUE(all.as_dict().at(Value("grid")).as_tensor().equal(full_state()[2].second.as_tensor()));
  }
}

TEST(Distributed, ReplicatedItemsBalancedAcrossRanks) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/ckpt";
  run_ranks(3, [&](int, Comm& comm) {
    DistributedState st;
    for (int i = 0; i < 6; ++i) st.add("w" + std::to_string(i), Value(pattern(DType::float32, {64}, 10 + i)));
    save_distributed(dir, st, comm);
  });
  // six equal replicated tensors over three ranks: two files each
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(fs::exists(dir + "/__" + std::to_string(r) + "_0.distcp")) << r;
  DistributedReader reader(dir);
  for (int i = 0; i < 6; ++i)
    EXPECT_TRUE(reader.read("w" + std::to_string(i)).equal(pattern(DType::float32, {64}, 10 + i)));
}

TEST(Distributed, ShardsThatDoNotTileAreRefusedBeforeWriting) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/ckpt";
  std::string msg;
  run_ranks(2, [&](int rank, Comm& comm) {
    DistributedState st;
    // both ranks claim rows 0..2 of a 4-row tensor
    st.add_shard("w", pattern(DType::float32, {2, 3}, 1), {4, 3}, {rank == 0 ? 0 : 1, 0});
    std::string m = error_of([&] { save_distributed(dir, st, comm); });
    if (rank == 0) msg = m;
  });
  EXPECT_NE(msg.find("do not tile"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir + "/.metadata"));
  EXPECT_FALSE(fs::exists(dir + "/__0_0.distcp"));
}

TEST(Distributed, OneRankFailingLeavesNoMetadata) {
  TempDir tmp;
  const std::string prev = tmp.path() + "/step_1", next = tmp.path() + "/step_2";
  run_ranks(3, [&](int rank, Comm& comm) { save_distributed(prev, rank_state(rank, 3), comm); });
  // rank 1 cannot write its data file (a directory is in the way)
  fs::create_directories(next + "/__1_0.distcp/x");
  std::vector<std::string> msgs(3);
  run_ranks(3, [&](int rank, Comm& comm) {
    msgs[static_cast<size_t>(rank)] = error_of([&] { save_distributed(next, rank_state(rank, 3), comm); });
  });
  for (int r = 0; r < 3; ++r) EXPECT_FALSE(msgs[static_cast<size_t>(r)].empty()) << "rank " << r << " did not throw";
  EXPECT_NE(msgs[1].find("rank 1"), std::string::npos) << msgs[1];
  EXPECT_FALSE(fs::exists(next + "/.metadata"));
  EXPECT_FALSE(is_distributed_checkpoint(next));
  EXPECT_TRUE(is_distributed_checkpoint(prev));
  EXPECT_THROW(load(next), Error);
}

TEST(Distributed, SingleProcessSaveOfAStateDict) {
  TempDir tmp;
  Value sd = Value::dict();
  sd.as_dict().set(Value("a"), Value(pattern(DType::float16, {3, 2}, 7)));
  Value layers = Value::list({Value(pattern(DType::uint8, {4}, 8)), Value(pattern(DType::int16, {2}, 9))});
  sd.as_dict().set(Value("layers"), layers);
  sd.as_dict().set(Value("epoch"), Value(int64_t{3}));
  save_distributed(tmp.path() + "/d", sd);
  EXPECT_TRUE(fs::exists(tmp.path() + "/d/__0_0.distcp"));
  size_t files = 0;
  for (const auto& f : fs::directory_iterator(tmp.path() + "/d")) files += f.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 2u);  // .metadata + one data file; no temporaries
  DistributedReader r(tmp.path() + "/d");
  std::vector<std::string> names;
  for (const auto& i : r.items()) names.push_back(i.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "layers.0", "layers.1", "epoch"}));
  EXPECT_TRUE(load(tmp.path() + "/d") == sd);
}

// ---------------------------------------------------------------- hostile directories

namespace {

// A one-tensor checkpoint whose metadata the test then edits.
struct Crafted {
  TempDir tmp;
  std::string dir = tmp.path();
  formats::dcp::Metadata md;
  Crafted() {
    Value sd = Value::dict();
    sd.as_dict().set(Value("w"), Value(pattern(DType::float32, {4, 3}, 1)));
    save_distributed(dir, sd);
    md = formats::dcp::parse_metadata(std::as_bytes(std::span<const char>(slurp(dir + "/.metadata"))), "m");
  }
  void rewrite() { write_file(dir + "/.metadata", formats::dcp::write_metadata(md, dir)); }
  std::string load_error() { return error_of([&] { (void)load(dir); }); }
};

}  // namespace

TEST(DistributedHostile, RecordPastTheEndOfItsFile) {
  Crafted c;
  c.md.entries[0].chunks[0].storage.offset = 1u << 20;
  c.rewrite();
  std::string e = c.load_error();
  EXPECT_NE(e.find("__0_0.distcp"), std::string::npos) << e;
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("1048576"), std::string::npos) << e;
}

TEST(DistributedHostile, ChunksThatOverlapOrLeaveGaps) {
  Crafted c;
  auto chunk = c.md.entries[0].chunks[0];
  chunk.sizes = {2, 3};
  c.md.entries[0].chunks = {chunk, chunk};  // the same rows twice, rows 2..3 missing
  c.md.entries[0].chunks[1].offsets = {1, 0};
  c.rewrite();
  std::string e = c.load_error();
  EXPECT_NE(e.find("overlap"), std::string::npos) << e;
  EXPECT_NE(e.find(".metadata"), std::string::npos) << e;
  c.md.entries[0].chunks.resize(1);
  c.rewrite();
  e = c.load_error();
  EXPECT_NE(e.find("cover 6 of the tensor's 12"), std::string::npos) << e;
  c.md.entries[0].chunks[0].offsets = {3, 0};
  c.rewrite();
  e = c.load_error();
  EXPECT_NE(e.find("outside the tensor"), std::string::npos) << e;
}

TEST(DistributedHostile, DataFileOutsideTheDirectory) {
  for (const char* name : {"../x.distcp", "/etc/passwd", "..", "a/b"}) {
    Crafted c;
    c.md.entries[0].chunks[0].storage.relative_path = name;
    c.rewrite();
    std::string e = c.load_error();
    EXPECT_NE(e.find("not a plain file name"), std::string::npos) << name << ": " << e;
  }
}

TEST(DistributedHostile, ChunkRecordOfAnotherShapeOrType) {
  Crafted c;
  c.md.entries[0].dtype = DType::int32;
  c.rewrite();
  std::string e = c.load_error();
  EXPECT_NE(e.find("float32 tensor of shape [4, 3], .metadata says int32"), std::string::npos) << e;
}

TEST(DistributedHostile, VerifyFindsAFlippedDataByte) {
  Crafted c;
  DistributedReader good(c.dir);
  EXPECT_EQ(good.verify(), 1u);
  std::string data = slurp(c.dir + "/__0_0.distcp");
  const Tensor t = pattern(DType::float32, {4, 3}, 1);
  const size_t at = data.find(std::string(reinterpret_cast<const char*>(t.data()), t.nbytes()));
  ASSERT_NE(at, std::string::npos);
  data[at + 5] = static_cast<char>(data[at + 5] ^ 0x10);
  write_file(c.dir + "/__0_0.distcp", data);
  DistributedReader r(c.dir);
  std::string e = error_of([&] { r.verify(); });
  EXPECT_NE(e.find("CRC"), std::string::npos) << e;
  EXPECT_NE(e.find("__0_0.distcp"), std::string::npos) << e;
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
}

TEST(DistributedHostile, MetadataThatIsNotDcp) {
  TempDir tmp;
  pickle::TorchPickler p;
  write_file(tmp.path() + "/.metadata", p.dump(Value(int64_t{5})));
  EXPECT_FALSE(is_distributed_checkpoint(tmp.path()));
  write_file(tmp.path() + "/.metadata", "\x80\x02garbage");
  EXPECT_FALSE(is_distributed_checkpoint(tmp.path()));
  EXPECT_THROW(DistributedReader r(tmp.path()), FormatError);
}

TEST(DistributedHostile, EveryTruncationOfMetadataIsAnError) {
  Crafted c;
  const std::string full = slurp(c.dir + "/.metadata");
  for (size_t n = 0; n < full.size(); n += 7) {
    write_file(c.dir + "/.metadata", full.substr(0, n));
    EXPECT_THROW(DistributedReader r(c.dir), Error) << n;
  }
}

// The pickler writes inert objects as the calls that made them, and they decode back.
TEST(Distributed, PicklerWritesObjects) {
  auto o = std::make_shared<Object>();
  o->module = "m";
  o->name = "C";
  o->how = "NEWOBJ";
  o->args = Value::tuple();
  Value state = Value::dict();
  state.as_dict().set(Value("x"), Value(int64_t{1}));
  o->state = state;
  Value v = Value::list({Value(o), Value(o), Value(Global{"builtins", "getattr"})});
  pickle::TorchPickler plain;
  EXPECT_THROW(plain.dump(v), Error);
  pickle::TorchPickler p(true);
  std::string bytes = p.dump(v);
  pickle::Options opt;
  opt.policy = pickle::GlobalPolicy::inspect;
  Value back = pickle::unpickle(std::as_bytes(std::span<const char>(bytes)), opt);
  ASSERT_TRUE(back.is_list());
  EXPECT_EQ(back.as_list()[0].container_id(), back.as_list()[1].container_id());  // memoized once
  EXPECT_EQ(back.as_list()[0].as_object().qualified(), "m.C");
  EXPECT_TRUE(back.as_list()[0].as_object().state == state);
}
