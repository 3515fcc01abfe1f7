# cmake -DPYTHON=... -DCKPT=... -DSCRIPT=run_interop.py -DWORKDIR=... -P run_interop.cmake
# Runs run_interop.py with PYTHON (which must have torch), or fails saying how to get it.
foreach(_var PYTHON CKPT SCRIPT WORKDIR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_interop.cmake: -D${_var}=... is required")
  endif()
endforeach()
if(NOT EXISTS "${PYTHON}")
  message(FATAL_ERROR
    "interop: Python interpreter ${PYTHON} not found.\n"
    "Run `bash scripts/setup` (installs python3-torch and the PyTorch 2.x venv), "
    "or configure with -DCKPT_INTEROP=OFF to leave the interop tests out.")
endif()
if(NOT DEFINED TIMEOUT_SCALE)
  set(TIMEOUT_SCALE 1)
endif()
execute_process(COMMAND "${PYTHON}" "${SCRIPT}" --ckpt "${CKPT}" --python "${PYTHON}" --workdir "${WORKDIR}"
                        --timeout-scale "${TIMEOUT_SCALE}"
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "interop with ${PYTHON}: failed (${_rc})")
endif()
