// Storage persistent ids in TorchScript archives (issue #19 item 5).
//
// Early TorchScript (torch ~1.2) wrote six fields, ('storage', type, key,
// location, numel, None); torch 1.13's torch.jit.load reads fields 0-4 by
// position and ignores the rest. ckpt refused them ("storage persistent id has
// 6 fields, expected 5"). valid/torch113/scripted_pid6.pt is such an archive
// (tests/data/make_torchscript_pid6.py, checked there against torch.jit.load);
// its state dict is also checked against its .expected.json by load_test.cpp.
#include <gtest/gtest.h>

#include <string>

#include "ckpt/ckpt.hpp"
#include "container/zip.hpp"
#include "io/file.hpp"

using namespace ckpt;
using namespace std::string_literals;

namespace {

std::string data_path(const std::string& rel) { return std::string(CKPT_TEST_DATA_DIR) + "/" + rel; }

std::string unicode(const std::string& s) {  // BINUNICODE
  std::string out = "X";
  const auto n = static_cast<uint32_t>(s.size());
  for (int i = 0; i < 4; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  return out + s;
}

// A pickle whose value is _rebuild_tensor_v2(<persistent id>, 0, (2,), (1,),
// False, OrderedDict()): a float tensor of 2 elements in storage "0". The
// persistent id is ('storage', torch.FloatStorage, '0', 'cpu', 2) followed by
// `extra` (pickled items).
std::string tensor_pickle(const std::string& extra) {
  std::string p = "\x80\x02"s;
  p += "ctorch._utils\n_rebuild_tensor_v2\n(("s;
  p += unicode("storage") + "ctorch\nFloatStorage\n"s + unicode("0") + unicode("cpu") + "K\x02"s;
  p += extra + "tQ"s;                        // TUPLE, BINPERSID
  p += "K\x00(K\x02t(K\x01t\x89"s;           // offset 0, size (2,), stride (1,), False
  p += "ccollections\nOrderedDict\n)R"s;    // OrderedDict()
  p += "tR."s;
  return p;
}

std::string archive(const std::string& data_pkl, bool torchscript) {
  std::string out;
  auto w = io::string_writer(out);
  zip::ZipWriter z(*w);
  auto add = [&](const std::string& name, const std::string& bytes) {
    z.add(name, std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
  };
  add("archive/data.pkl", data_pkl);
  if (torchscript) add("archive/constants.pkl", "\x80\x02)."s);
  const float values[2] = {1.5f, -2.0f};
  z.add("archive/data/0", std::as_bytes(std::span<const float>(values, 2)));
  add("archive/version", "3");
  z.finish();
  w->close();
  return out;
}

Value load_bytes(const std::string& bytes) {
  LoadOptions o;
  o.weights_only = false;
  return load(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())), o);
}

std::string load_error(const std::string& bytes) {
  try {
    load_bytes(bytes);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "(loaded)";
}

}  // namespace

TEST(TorchScriptPersistentIds, SixFieldArchiveLoadsAsTorchJitLoadReadsIt) {
  const std::string file = data_path("valid/torch113/scripted_pid6.pt");
  EXPECT_EQ(detect_format(file), Format::torchscript);
  StateDict sd = load_state_dict(file);
  ASSERT_EQ(sd.keys(), (std::vector<std::string>{"outer.w16", "outer.scale", "outer.inner.steps",
                                                 "outer.inner.fc.weight", "outer.inner.fc.bias"}));
  const Tensor& w16 = sd.at("outer.w16");  // torch.arange(4, dtype=float16)
  ASSERT_EQ(w16.dtype(), DType::float16);
  ASSERT_EQ(w16.numel(), 4);
  const auto* h = reinterpret_cast<const uint16_t*>(w16.data());
  EXPECT_EQ(h[0], 0x0000);
  EXPECT_EQ(h[1], 0x3c00);  // 1.0
  EXPECT_EQ(h[3], 0x4200);  // 3.0
  const Tensor& scale = sd.at("outer.scale");
  ASSERT_EQ(scale.dtype(), DType::float64);
  EXPECT_EQ(reinterpret_cast<const double*>(scale.data())[0], 0.5);
  EXPECT_EQ(reinterpret_cast<const double*>(scale.data())[1], 2.0);
  const Tensor& steps = sd.at("outer.inner.steps");
  ASSERT_EQ(steps.dtype(), DType::int64);
  EXPECT_EQ(steps.dim(), 0);
  EXPECT_EQ(*reinterpret_cast<const int64_t*>(steps.data()), 7);
  EXPECT_EQ(sd.at("outer.inner.fc.weight").sizes(), (std::vector<int64_t>{2, 3}));

  // constants.pkl's persistent id has six fields too: the traced constant [10, 20].
  LoadOptions o;
  o.weights_only = false;
  Value all = load(file, o);
  const Value& constants = all.as_dict().at(Value("constants"));
  ASSERT_TRUE(constants.is_tuple()) << constants.repr();
  ASSERT_EQ(constants.as_tuple().size(), 1u);
  const Tensor& c = constants.as_tuple()[0].as_tensor();
  ASSERT_EQ(c.dtype(), DType::float32);
  ASSERT_EQ(c.numel(), 2);
  EXPECT_EQ(reinterpret_cast<const float*>(c.data())[0], 10.0f);
  EXPECT_EQ(reinterpret_cast<const float*>(c.data())[1], 20.0f);
}

TEST(TorchScriptPersistentIds, FiveAndSixFieldsWithNoneLoad) {
  for (const std::string& extra : {""s, "N"s}) {
    Value v = load_bytes(archive(tensor_pickle(extra), /*torchscript=*/true));
    ASSERT_TRUE(v.is_dict()) << v.repr();
    const Value& module = v.as_dict().at(Value("module"));
    ASSERT_TRUE(module.is_tensor()) << module.repr();
    const Tensor& t = module.as_tensor();
    ASSERT_EQ(t.numel(), 2);
    EXPECT_EQ(reinterpret_cast<const float*>(t.data())[1], -2.0f) << "extra=" << extra;
  }
}

TEST(TorchScriptPersistentIds, OtherShapesAreRefusedClearly) {
  // A view (view_key, offset, size) in the sixth field: torch.jit.load would drop it.
  std::string e = load_error(archive(tensor_pickle(unicode("0") + "K\x00K\x01\x87"s), true));
  EXPECT_NE(e.find("sixth field (view metadata) is ('0', 0, 1), expected None"), std::string::npos) << e;
  // Seven fields.
  e = load_error(archive(tensor_pickle("NN"), true));
  EXPECT_NE(e.find("has 7 fields, expected 5 or 6 ('storage', type, key, location, numel[, None])"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("data.pkl"), std::string::npos) << e;  // the record, with its offset
  // Four fields: no numel (drop the BININT1 2 that precedes the extra fields).
  std::string four = tensor_pickle("");
  four.erase(four.find("K\x02tQ"s), 2);
  e = load_error(archive(four, true));
  EXPECT_NE(e.find("has 4 fields, expected 5 or 6"), std::string::npos) << e;
}

TEST(TorchScriptPersistentIds, TorchSaveArchivesStayAtFiveFields) {
  // torch.load unpacks exactly five fields: a torch.save archive with six is damaged.
  EXPECT_NO_THROW(load_bytes(archive(tensor_pickle(""), /*torchscript=*/false)));
  std::string e = load_error(archive(tensor_pickle("N"), /*torchscript=*/false));
  EXPECT_NE(e.find("has 6 fields, expected 5"), std::string::npos) << e;
  EXPECT_EQ(e.find("or 6"), std::string::npos) << e;
}
