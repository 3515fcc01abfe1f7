// The package check's ckpt::mpi consumer (find_package(ckpt COMPONENTS mpi)):
// MpiComm's collectives, through the public headers only.
//   consumer_mpi            alone (one rank) or under mpirun -np N
#include <ckpt/ckpt.hpp>
#include <ckpt/mpi.hpp>

#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  try {
    ckpt::MpiComm comm;
    if (!comm.all_true(true)) throw std::runtime_error("all_true(true) is false");
    std::string hello = comm.rank() == 0 ? "from rank 0" : "";
    comm.broadcast(hello, 0);
    if (hello != "from rank 0") throw std::runtime_error("broadcast gave '" + hello + "'");
    std::printf("consumer_mpi: rank %d of %d, %zu ranks gathered\n", comm.rank(), comm.size(),
                comm.allgather(std::to_string(comm.rank())).size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer_mpi: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
