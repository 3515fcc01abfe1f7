# The Open MPI communicator for distributed checkpoints, target ckpt::mpi
# (include/ckpt/mpi.hpp). Included from the top-level CMakeLists.txt when
# CKPT_WITH_MPI is ON; without MPI (Debian: libopenmpi-dev) it is skipped with a
# message. The core library never depends on MPI.
find_package(MPI COMPONENTS CXX QUIET)
if(NOT MPI_CXX_FOUND)
  message(STATUS "ckpt: MPI not found; ckpt::mpi and the MPI tests are not built")
  return()
endif()
add_library(ckpt_mpi ${CMAKE_CURRENT_LIST_DIR}/mpi_comm.cpp)
add_library(ckpt::mpi ALIAS ckpt_mpi)
target_link_libraries(ckpt_mpi PUBLIC ckpt MPI::MPI_CXX)
target_compile_options(ckpt_mpi PRIVATE ${CKPT_WARNINGS})
set_target_properties(ckpt_mpi PROPERTIES EXPORT_NAME mpi)
message(STATUS "ckpt: building ckpt::mpi with MPI ${MPI_CXX_VERSION}")
# Installed as the component `mpi` of the package: find_package(ckpt COMPONENTS mpi)
# finds MPI again (cmake/ckptConfig.cmake.in) and loads ckptMpiTargets.cmake.
install(TARGETS ckpt_mpi EXPORT ckptMpiTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(EXPORT ckptMpiTargets NAMESPACE ckpt:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ckpt)
list(APPEND CKPT_INSTALLED_COMPONENTS mpi)
