# localrun: pip's build of llama-cpp-python, made the exact runtime's and trimmed.
#
# README's first command passes it to pip's build of llama-cpp-python:
#   CMAKE_ARGS="-DCMAKE_PROJECT_INCLUDE=$PWD/localrun/runtimes/exact.cmake" pip install ...
# CMake runs it right after llama-cpp-python's project() call, before llama.cpp is added:
# - On Linux it applies the exact runtime's patch set to vendor/llama.cpp (python -m
#   localrun.runtimes.patchset), so the one libggml-cpu pip compiles is the exact runtime, and
#   installs localrun-exact.json beside it (runtimes/exact.builtin reads it). Then llama.cpp's
#   CPU code is compiled once, not again by `localrun runtime install exact`.
# - Everywhere it leaves llama.cpp's common library and cpp-httplib out of the build: the Python
#   package loads libllama, libggml* and libmtmd only, and those two were 45% of the compile.
# Anything unexpected (another project, a patch that does not apply) is a warning, and the
# build goes on as llama-cpp-python's own.

include_guard(GLOBAL)

get_filename_component(_localrun_root "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
set(_localrun_llama "${CMAKE_SOURCE_DIR}/vendor/llama.cpp")

if(NOT EXISTS "${_localrun_llama}/ggml/src/ggml-cpu")
  message(WARNING "localrun: ${CMAKE_SOURCE_DIR} is not llama-cpp-python's source; left as it is")
  return()
endif()

if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND NOT LOCALRUN_EXACT STREQUAL "OFF")
  if(DEFINED Python_EXECUTABLE)
    set(_localrun_python "${Python_EXECUTABLE}")
  elseif(DEFINED Python3_EXECUTABLE)
    set(_localrun_python "${Python3_EXECUTABLE}")
  else()
    find_program(_localrun_python NAMES python3 python)
  endif()
  set(_localrun_marker "${CMAKE_BINARY_DIR}/localrun-exact.json")
  file(REMOVE "${_localrun_marker}")
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env "PYTHONPATH=${_localrun_root}"
            "${_localrun_python}" -m localrun.runtimes.patchset
            "${_localrun_llama}" "${SKBUILD_PROJECT_VERSION}" "${_localrun_marker}"
    RESULT_VARIABLE _localrun_status
    OUTPUT_VARIABLE _localrun_out
    ERROR_VARIABLE _localrun_err
  )
  if(_localrun_status EQUAL 0)
    message(STATUS "localrun: the exact runtime's patches applied to ggml-cpu")
    if(DEFINED SKBUILD_PLATLIB_DIR)
      install(FILES "${_localrun_marker}" DESTINATION "${SKBUILD_PLATLIB_DIR}/llama_cpp/lib")
    endif()
  else()
    message(WARNING "localrun: the exact runtime's patches were not applied: ${_localrun_err}")
  endif()
endif()

# llama.cpp adds its common library, and cpp-httplib for it, only with LLAMA_BUILD_COMMON, which
# llama-cpp-python forces ON in the cache. A normal variable outlives that cache entry (policy
# CMP0126, new in CMake 3.21, which llama-cpp-python requires) and llama.cpp's option() leaves
# it be (CMP0077): so neither is configured, built or installed.
set(LLAMA_BUILD_COMMON OFF)
