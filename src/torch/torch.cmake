# The optional LibTorch adapter, target ckpt::torch (include/ckpt/torch.hpp).
# Included from the top-level CMakeLists.txt when CKPT_WITH_TORCH is ON, so that
# find_package(Torch)'s imported targets are visible to the tests too. Without
# LibTorch the adapter is skipped with a message; the core library never depends
# on it.
#
# LibTorch 1.13 from Debian (libtorch-dev) is found by default. The LibTorch inside
# a PyPI torch wheel is found with
#   -DCMAKE_PREFIX_PATH=$(python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
# Two things that wheel's config needs help with:
#  - its find_library(c10) searches the system before the wheel, so with Debian's
#    libtorch also installed it would mix Debian's libc10 into a 2.x build: the
#    wheel's own libc10 is named here first;
#  - for CUDA wheels it probes the installed GPUs with a CUDA try_run that inherits
#    CMAKE_CXX_STANDARD 20, which nvcc/CMake reject: an explicit arch list skips the
#    probe (the adapter compiles no CUDA code).
foreach(_p IN LISTS CMAKE_PREFIX_PATH Torch_DIR)
  foreach(_cfg "${_p}/Torch/TorchConfig.cmake" "${_p}/TorchConfig.cmake")
    if(EXISTS "${_cfg}")
      get_filename_component(_cfgdir "${_cfg}" DIRECTORY)
      get_filename_component(_troot "${_cfgdir}/../../.." ABSOLUTE)
      if(NOT c10_LIBRARY AND EXISTS "${_troot}/lib/libc10.so")
        set(c10_LIBRARY "${_troot}/lib/libc10.so" CACHE FILEPATH "c10 of the LibTorch in CMAKE_PREFIX_PATH")
      endif()
    endif()
  endforeach()
endforeach()
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()

get_directory_property(_ckpt_imported_before IMPORTED_TARGETS)
find_package(Torch QUIET)
if(NOT Torch_FOUND)
  message(STATUS "ckpt: LibTorch not found; the adapter ckpt::torch is not built")
  return()
endif()
# LibTorch's imported targets (torch, torch_cpu, c10...) become global, so that a
# project that adds ckpt with add_subdirectory can link ckpt::torch.
get_directory_property(_ckpt_imported_after IMPORTED_TARGETS)
list(REMOVE_ITEM _ckpt_imported_after ${_ckpt_imported_before})
foreach(_t IN LISTS _ckpt_imported_after)
  set_property(TARGET ${_t} PROPERTY IMPORTED_GLOBAL TRUE)
endforeach()
message(STATUS "ckpt: LibTorch ${Torch_VERSION} found (${TORCH_INSTALL_PREFIX}); building ckpt::torch")

add_library(ckpt_torch ${CMAKE_CURRENT_LIST_DIR}/module.cpp ${CMAKE_CURRENT_LIST_DIR}/optim.cpp
  ${CMAKE_CURRENT_LIST_DIR}/comm.cpp)
add_library(ckpt::torch ALIAS ckpt_torch)
target_link_libraries(ckpt_torch PUBLIC ckpt ${TORCH_LIBRARIES})
target_compile_features(ckpt_torch PUBLIC cxx_std_20)  # its headers (and ckpt's) need C++20
target_include_directories(ckpt_torch PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_compile_options(ckpt_torch PRIVATE ${CKPT_WARNINGS} ${TORCH_CXX_FLAGS})
set_target_properties(ckpt_torch PROPERTIES EXPORT_NAME torch)
# A wheel's libtorch_cuda finds NCCL, cuBLAS... in the wheel's nvidia/*/lib through
# its own $ORIGIN rpath; the linker needs to be told, or it takes an older copy
# from the CUDA toolkit.
get_filename_component(_nvidia "${TORCH_INSTALL_PREFIX}/../nvidia" ABSOLUTE)
if(IS_DIRECTORY "${_nvidia}")
  file(GLOB _nvlibs LIST_DIRECTORIES true "${_nvidia}/*/lib")
  if(_nvlibs)
    string(JOIN ":" _nvlibs ${_nvlibs})
    target_link_options(ckpt_torch INTERFACE "LINKER:-rpath-link,${_nvlibs}")
  endif()
endif()
# Installed as the component `torch` of the package: find_package(ckpt COMPONENTS
# torch) finds LibTorch again, first where this build found it (Torch_DIR, recorded
# in the package config), and loads ckptTorchTargets.cmake.
install(TARGETS ckpt_torch EXPORT ckptTorchTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(EXPORT ckptTorchTargets NAMESPACE ckpt:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ckpt)
list(APPEND CKPT_INSTALLED_COMPONENTS torch)
set(CKPT_TORCH_DIR "${Torch_DIR}")
