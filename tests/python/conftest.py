"""Test setup: imports the pack under a fixed package name, and the CPU/CUDA device fixture.

The pack is imported through its own directory rather than by putting the repository root on
sys.path: ComfyUI has a top-level module named ``nodes`` that our ``nodes`` package must never
shadow, nor be shadowed by.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "pickdraw_pack"


def import_pack():
    """The pack as a package named PACK_NAME, without running its root __init__.py (ComfyUI's entry
    point, which needs ComfyUI); its subpackages import normally."""
    if PACK_NAME not in sys.modules:
        package = types.ModuleType(PACK_NAME)
        package.__path__ = [str(ROOT)]
        package.__file__ = str(ROOT / "__init__.py")
        sys.modules[PACK_NAME] = package
    return sys.modules[PACK_NAME]


def evaluation_module(package: str, name: str):
    """<package>.<name> from tests/evaluation/<package> (the toy world, the DreamBench harness), imported as a
    package made from the folder's path rather than through sys.path."""
    if package not in sys.modules:
        folder = ROOT / "tests" / "evaluation" / package
        made = types.ModuleType(package)
        made.__path__ = [str(folder)]
        made.__file__ = str(folder / "__init__.py")
        sys.modules[package] = made
    return importlib.import_module(f"{package}.{name}")


def toy_world_module(name: str):
    """toy_world.<name>: the generator, judge, training and sampling of tests/evaluation/toy_world."""
    return evaluation_module("toy_world", name)


@pytest.fixture(scope="session")
def ops():
    import_pack()
    return importlib.import_module(f"{PACK_NAME}.nodes.ops")


@pytest.fixture(scope="session")
def reference():
    import_pack()
    return importlib.import_module(f"{PACK_NAME}.nodes.ops.reference")


def _cuda_skip_reason(ops_module) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if not ops_module.build_info()["cuda"]:
        return "the native library was built without CUDA kernels (see install.py's output)"
    return None


@pytest.fixture(params=["cpu", "cuda"])
def device(request, ops):
    if request.param == "cuda":
        reason = _cuda_skip_reason(ops)
        if reason:
            pytest.skip(reason)
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _fixed_seed():
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)


def nondet_tol(device: torch.device) -> float:
    """gradcheck's tolerance for a backward that is not bitwise reentrant.

    On CUDA the UREMD backward adds palette gradients with atomics and cuDNN's convolution
    backward (the smoothing) sums in a scheduling-dependent order: float64 results then differ
    in the last bits between two identical calls. On the CPU both are deterministic.
    """
    return 1e-12 if device.type == "cuda" else 0.0
