#include "ckpt/mpi.hpp"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "ckpt/error.hpp"

namespace ckpt {

namespace {

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, text, &n);
  throw Error(std::string(call) + " failed: " + std::string(text, static_cast<size_t>(n)));
}

// MPI counts are ints: messages are moved in pieces of at most INT_MAX bytes.
constexpr uint64_t kPiece = INT_MAX;

int as_count(uint64_t n, const char* call) {
  if (n > kPiece) throw Error(std::string(call) + ": " + std::to_string(n) + " bytes in one message (at most 2 GiB)");
  return static_cast<int>(n);
}

}  // namespace

MpiComm::MpiComm(MPI_Comm comm) : comm_(comm) {
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

void MpiComm::barrier() { check(MPI_Barrier(comm_), "MPI_Barrier"); }

void MpiComm::broadcast(std::string& bytes, int root) {
  uint64_t n = bytes.size();
  check(MPI_Bcast(&n, 1, MPI_UINT64_T, root, comm_), "MPI_Bcast");
  bytes.resize(static_cast<size_t>(n));
  for (uint64_t off = 0; off < n; off += kPiece)
    check(MPI_Bcast(bytes.data() + off, static_cast<int>(std::min(kPiece, n - off)), MPI_BYTE, root, comm_),
          "MPI_Bcast");
}

std::vector<std::string> MpiComm::gather(const std::string& bytes, int root) {
  const int n = as_count(bytes.size(), "MPI_Gatherv");
  std::vector<int> counts(rank_ == root ? static_cast<size_t>(size_) : 0), displs(counts.size());
  check(MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, root, comm_), "MPI_Gather");
  std::string all;
  if (rank_ == root) {
    uint64_t total = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      displs[r] = as_count(total, "MPI_Gatherv");
      total += static_cast<uint64_t>(counts[r]);
    }
    all.resize(static_cast<size_t>(total));
  }
  check(MPI_Gatherv(bytes.data(), n, MPI_BYTE, all.data(), counts.data(), displs.data(), MPI_BYTE, root, comm_),
        "MPI_Gatherv");
  std::vector<std::string> out;
  for (size_t r = 0; r < counts.size(); ++r)
    out.push_back(all.substr(static_cast<size_t>(displs[r]), static_cast<size_t>(counts[r])));
  return out;
}

std::vector<std::string> MpiComm::allgather(const std::string& bytes) {
  const int n = as_count(bytes.size(), "MPI_Allgatherv");
  std::vector<int> counts(static_cast<size_t>(size_)), displs(counts.size());
  check(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_), "MPI_Allgather");
  uint64_t total = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    displs[r] = as_count(total, "MPI_Allgatherv");
    total += static_cast<uint64_t>(counts[r]);
  }
  std::string all(static_cast<size_t>(total), '\0');
  check(MPI_Allgatherv(bytes.data(), n, MPI_BYTE, all.data(), counts.data(), displs.data(), MPI_BYTE, comm_),
        "MPI_Allgatherv");
  std::vector<std::string> out;
  for (size_t r = 0; r < counts.size(); ++r)
    out.push_back(all.substr(static_cast<size_t>(displs[r]), static_cast<size_t>(counts[r])));
  return out;
}

bool MpiComm::all_true(bool ok) {
  int in = ok ? 1 : 0, out = 0;
  check(MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LAND, comm_), "MPI_Allreduce");
  return out != 0;
}

}  // namespace ckpt
