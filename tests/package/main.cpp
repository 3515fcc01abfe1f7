// The package check's consumer: uses ckpt through its public headers only.
//   consumer [FILE.pt]   prints the dtype table check, then the tensors of FILE
#include <ckpt/ckpt.hpp>

#include <cstdio>
#include <exception>
#include <string>

int main(int argc, char** argv) {
  const auto f32 = ckpt::dtype_from_name("float32");
  const auto half = ckpt::dtype_from_name("torch.half");
  if (!f32 || *f32 != ckpt::DType::float32 || ckpt::itemsize(*f32) != 4 || !half ||
      ckpt::name(*half) != "float16" || ckpt::dtype_from_name("no_such_dtype")) {
    std::fprintf(stderr, "consumer: dtype lookups are wrong\n");
    return 1;
  }
  std::printf("ckpt %s: dtype_from_name(\"float32\") -> %s\n", ckpt::version(),
              std::string(ckpt::name(*f32)).c_str());
  if (argc < 2) return 0;
  try {
    const ckpt::StateDict sd = ckpt::load_state_dict(argv[1]);
    for (const auto& [name, t] : sd)
      std::printf("%s %s %s\n", name.c_str(), std::string(ckpt::name(t.dtype())).c_str(),
                  ckpt::tensor_sha256(t).c_str());
    if (sd.empty()) {
      std::fprintf(stderr, "consumer: %s has no tensors\n", argv[1]);
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
