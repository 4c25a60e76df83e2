"""Loads the native module ``_C`` and checks that it matches the running torch.

A native module built against another torch version (after a ComfyUI or torch upgrade) can fail to
load with an unreadable "undefined symbol" error, or load and crash later. So the build record
``_C.build.json`` written next to the module is read and compared *before* the module is
imported, and a mismatch is an ImportError that says exactly what to run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import sysconfig
from pathlib import Path

import torch

logger = logging.getLogger("pickdraw")

_HERE = Path(__file__).resolve().parent
_PACK_ROOT = _HERE.parent.parent
_BUILD_RECORD = _HERE / "_C.build.json"
_FIX = f'run "{Path(sys.executable).name} install.py" in {_PACK_ROOT} with the Python that runs ComfyUI'

_module = None


def unavailable_reasons() -> list[str]:
    """Why the native module cannot be used with this torch; empty when it can."""
    if not _BUILD_RECORD.is_file():
        return [f"the native module is not built (no {_BUILD_RECORD.name}); {_FIX}"]
    try:
        record = json.loads(_BUILD_RECORD.read_text())
    except (OSError, ValueError) as exc:
        return [f"the build record {_BUILD_RECORD} is unreadable ({exc}); {_FIX}"]
    reasons = []
    if record.get("torch_version") != torch.__version__:
        reasons.append(
            f"the native module was built for torch {record.get('torch_version')} but torch "
            f"{torch.__version__} is running (torch was upgraded or another Python runs ComfyUI); "
            f"rebuild it: {_FIX}"
        )
    if record.get("python_ext_suffix") != sysconfig.get_config_var("EXT_SUFFIX"):
        reasons.append(
            f"the native module was built for another Python ({record.get('python_ext_suffix')}); {_FIX}"
        )
    return reasons


# One module object per process, whatever package name the pack was imported under (ComfyUI
# imports it by folder name, pytest may import the same folder again under another name):
# pybind11 refuses to register the same C++ classes twice.
_CANONICAL_NAME = "pickdraw_native._C"


def _import_extension():
    module = sys.modules.get(_CANONICAL_NAME)
    if module is not None:
        return module
    path = _HERE / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    spec = importlib.util.spec_from_file_location(_CANONICAL_NAME, path)
    if spec is None or not path.is_file():
        raise ImportError(f"Pick-and-Draw native module {path.name} is missing; {_FIX}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_CANONICAL_NAME] = module
    return module


def load():
    """Imports and returns the native module, or raises ImportError with the fix."""
    global _module
    if _module is not None:
        return _module
    reasons = unavailable_reasons()
    if reasons:
        raise ImportError("Pick-and-Draw native library unavailable: " + "; ".join(reasons))
    module = _import_extension()
    built = module.build_info()
    if built["torch_version"] != torch.__version__:  # the record was stale or hand-edited
        raise ImportError(
            f"Pick-and-Draw native module reports torch {built['torch_version']}, running "
            f"{torch.__version__}; {_FIX}"
        )
    logger.info(
        "Pick-and-Draw native library %s loaded (torch %s, %s kernels)",
        built["pickdraw_version"],
        built["torch_version"],
        "CUDA and CPU" if built["cuda"] else "CPU only",
    )
    _module = module
    return module
