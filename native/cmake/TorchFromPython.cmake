# Finds torch, Python and nlohmann_json from the Python interpreter PICKDRAW_PYTHON.
#
# Why not find_package(Torch): TorchConfig.cmake of a CUDA build of torch fails outright on a
# machine without a CUDA toolkit, while our CPU build needs none of it. The information below is
# exactly what torch.utils.cpp_extension itself uses to build extensions.
#
# Defines the imported target pickdraw::torch (LibTorch, no Python), pickdraw::torch_python
# (adds Python and torch's Python bindings, for the module only), and the variables
# PICKDRAW_TORCH_VERSION, PICKDRAW_TORCH_CUDA (empty for a CPU build of torch),
# PICKDRAW_PYTHON_EXT_SUFFIX and PICKDRAW_NLOHMANN_INCLUDE (may be empty).

if(NOT PICKDRAW_PYTHON)
  find_program(PICKDRAW_PYTHON NAMES python3 python REQUIRED)
endif()

set(_probe [=[
import json, sysconfig, sys
out = {"python_include": sysconfig.get_paths()["include"],
       "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX")}
try:
    import torch
    from torch.utils import cpp_extension
except Exception as exc:  # reported by CMake as a fatal error with the fix
    out["error"] = repr(exc)
else:
    out.update(version=torch.__version__, cuda=torch.version.cuda or "",
               includes=cpp_extension.include_paths(),
               libdir=cpp_extension.library_paths()[0],
               cxx11_abi=int(torch._C._GLIBCXX_USE_CXX11_ABI))
try:
    import nlohmann_json, os
    out["nlohmann"] = os.path.join(os.path.dirname(nlohmann_json.__file__), "include")
except Exception:
    out["nlohmann"] = ""
print(json.dumps(out))
]=])
execute_process(COMMAND "${PICKDRAW_PYTHON}" -c "${_probe}"
                OUTPUT_VARIABLE _probe_json RESULT_VARIABLE _probe_rc ERROR_VARIABLE _probe_err)
if(NOT _probe_rc EQUAL 0)
  message(FATAL_ERROR "pickdraw: could not run ${PICKDRAW_PYTHON}: ${_probe_err}")
endif()
string(JSON _torch_error ERROR_VARIABLE _no_error GET "${_probe_json}" error)
if(_torch_error)
  message(FATAL_ERROR "pickdraw: torch cannot be imported by ${PICKDRAW_PYTHON} (${_torch_error}). "
                      "Install torch into that Python first (ComfyUI's own install does), then rerun.")
endif()

string(JSON PICKDRAW_TORCH_VERSION GET "${_probe_json}" version)
string(JSON PICKDRAW_TORCH_CUDA GET "${_probe_json}" cuda)
string(JSON PICKDRAW_PYTHON_EXT_SUFFIX GET "${_probe_json}" ext_suffix)
string(JSON PICKDRAW_NLOHMANN_INCLUDE GET "${_probe_json}" nlohmann)
string(JSON _python_include GET "${_probe_json}" python_include)
string(JSON _torch_libdir GET "${_probe_json}" libdir)
string(JSON _cxx11_abi GET "${_probe_json}" cxx11_abi)
string(JSON _n_includes LENGTH "${_probe_json}" includes)
set(_torch_includes "")
math(EXPR _last "${_n_includes} - 1")
foreach(_i RANGE ${_last})
  string(JSON _inc GET "${_probe_json}" includes ${_i})
  list(APPEND _torch_includes "${_inc}")
endforeach()

function(_pickdraw_torch_library out name)
  find_library(_lib_${name} NAMES ${name} PATHS "${_torch_libdir}" NO_DEFAULT_PATH)
  if(NOT _lib_${name})
    message(FATAL_ERROR "pickdraw: lib${name} not found in ${_torch_libdir}; is this torch installation complete?")
  endif()
  set(${out} "${_lib_${name}}" PARENT_SCOPE)
endfunction()
_pickdraw_torch_library(_c10 c10)
_pickdraw_torch_library(_torch_cpu torch_cpu)
_pickdraw_torch_library(_torch torch)
_pickdraw_torch_library(_torch_python torch_python)

add_library(pickdraw::torch INTERFACE IMPORTED)
set_target_properties(pickdraw::torch PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_torch_includes}"
  INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=${_cxx11_abi}"
  INTERFACE_LINK_LIBRARIES "${_c10};${_torch_cpu};${_torch}")
set(PICKDRAW_TORCH_LIBDIR "${_torch_libdir}")

add_library(pickdraw::torch_python INTERFACE IMPORTED)
set_target_properties(pickdraw::torch_python PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_python_include}"
  INTERFACE_LINK_LIBRARIES "pickdraw::torch;${_torch_python}")

if(PICKDRAW_WITH_CUDA)
  _pickdraw_torch_library(_c10_cuda c10_cuda)
  _pickdraw_torch_library(_torch_cuda torch_cuda)
  add_library(pickdraw::torch_cuda INTERFACE IMPORTED)
  # --no-as-needed: our code calls nothing in libtorch_cuda directly, but that library is what
  # registers ATen's CUDA kernels; a linker that drops unused libraries (the default on Ubuntu)
  # would leave executables such as the GoogleTest binaries without them. torch's own CMake
  # config does the same.
  set_target_properties(pickdraw::torch_cuda PROPERTIES
    INTERFACE_LINK_LIBRARIES "pickdraw::torch;-Wl,--no-as-needed;${_c10_cuda};${_torch_cuda};-Wl,--as-needed")
endif()

message(STATUS "pickdraw: torch ${PICKDRAW_TORCH_VERSION} (CUDA '${PICKDRAW_TORCH_CUDA}') from ${PICKDRAW_PYTHON}")
