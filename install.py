#!/usr/bin/env python3
"""Builds the Pick-and-Draw native library against the torch of the Python that runs this script.

ComfyUI-Manager runs it after installing requirements.txt; by hand: ``python install.py`` with the
Python that runs ComfyUI. It never installs, upgrades or replaces torch. Each decision is printed
on one line; a failure prints the reason and the fix, and exits non-zero.

Options: --with-tests (also build the GoogleTest binaries), --build-dir DIR, --cpu-only,
--skip-self-check. Environment: PICKDRAW_CUDA_ARCHS (e.g. "80;90") overrides the CUDA targets.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PREFIX = "[pick-and-draw]"


def say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def fail(reason: str, fix: str) -> None:
    say(f"FAILED: {reason}")
    say(f"fix: {fix}")
    sys.exit(1)


def find_torch():
    try:
        import torch
    except Exception as exc:  # any import failure means the same thing to the user
        fail(
            f"torch cannot be imported by {sys.executable} ({exc})",
            "run this script with the Python that runs ComfyUI (its torch is used; this script never installs torch)",
        )
    return torch


def find_cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        try:
            import cmake as cmake_pkg  # the PyPI package listed in requirements.txt

            cmake = str(Path(cmake_pkg.CMAKE_BIN_DIR) / "cmake")
        except Exception:
            fail("CMake was not found", f"{sys.executable} -m pip install cmake ninja")
    return cmake


def nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def find_nvcc() -> str | None:
    candidates = [shutil.which("nvcc")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and Path(c).is_file():
            return c
    return None


def cuda_architectures(torch, nvcc: str) -> str:
    if os.environ.get("PICKDRAW_CUDA_ARCHS"):
        return os.environ["PICKDRAW_CUDA_ARCHS"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}{minor}" for major, minor in caps)
    # No device visible: build for the data-centre and recent consumer generations nvcc knows.
    try:
        listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    supported = {a.removeprefix("compute_") for a in listed}
    wanted = ["80", "86", "89", "90", "120"]
    chosen = [a for a in wanted if a in supported] or ["80"]
    return ";".join(chosen)


def decide_cuda(torch, cpu_only: bool) -> tuple[bool, str | None, str]:
    """(build CUDA?, nvcc path, one-line reason)."""
    if cpu_only:
        return False, None, "CPU build: --cpu-only was given"
    if not torch.version.cuda:
        return False, None, f"CPU build: torch {torch.__version__} has no CUDA support"
    nvcc = find_nvcc()
    if nvcc is None:
        return False, None, (
            f"CPU build: torch uses CUDA {torch.version.cuda} but no CUDA toolkit (nvcc) was found; "
            f"install CUDA toolkit {torch.version.cuda} and rerun to get the CUDA kernels"
        )
    found = nvcc_version(nvcc)
    # CUDA keeps binary compatibility within a major version (as torch.utils.cpp_extension
    # accepts), not across majors.
    if found is None or found.split(".")[0] != torch.version.cuda.split(".")[0]:
        return False, None, (
            f"CPU build: nvcc {found} at {nvcc} does not match torch's CUDA {torch.version.cuda}; "
            f"install CUDA toolkit {torch.version.cuda} (or set CUDA_HOME to it) and rerun"
        )
    if found != torch.version.cuda:
        return True, nvcc, (
            f"CUDA build: nvcc {found} and torch's CUDA {torch.version.cuda} share the major version"
        )
    return True, nvcc, f"CUDA build: nvcc {found} matches torch's CUDA {torch.version.cuda}"


def run(cmd: list[str], what: str, fix: str) -> None:
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        fail(f"{what} failed (exit code {result.returncode}; the compiler's messages are above)", fix)


SELF_CHECK = textwrap.dedent(
    """
    import sys, types, torch
    # The pack as a package without its root __init__.py, which is ComfyUI's entry point.
    pack = types.ModuleType("pickdraw_selfcheck"); pack.__path__ = [{root!r}]; sys.modules["pickdraw_selfcheck"] = pack
    from pickdraw_selfcheck.nodes import ops
    from pickdraw_selfcheck.nodes.ops import reference
    torch.manual_seed(0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops.build_info()["cuda"] else [])
    for device in devices:
        g = torch.randn(2, 300, 64, device=device, dtype=torch.float64, requires_grad=True)
        p = torch.randn(2, 200, 64, device=device, dtype=torch.float64)
        loss = ops.uremd(g, p)
        torch.testing.assert_close(loss, reference.uremd(g, p))
        loss.sum().backward()
        assert torch.isfinite(g.grad).all()
    # A C++ error must reach Python as an exception (see the crash handling in install.py).
    try:
        ops.nearest_sigma([1.0], 100.0)
    except ValueError:
        pass
    try:
        ops.uremd(torch.zeros(1, 2, 3), torch.zeros(1, 0, 3))
    except RuntimeError:
        pass
    print(" ".join(devices))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-tests", action="store_true", help="also build the GoogleTest binaries")
    parser.add_argument("--build-dir", default=str(ROOT / "build"), help="CMake build folder (kept for fast rebuilds)")
    parser.add_argument("--cpu-only", action="store_true", help="do not build the CUDA kernels")
    parser.add_argument("--skip-self-check", action="store_true")
    args = parser.parse_args()

    torch = find_torch()
    say(f"using torch {torch.__version__} from {sys.executable} (never installed or changed by this script)")
    cmake = find_cmake()
    with_cuda, nvcc, reason = decide_cuda(torch, args.cpu_only)
    say(reason)

    configure = [
        cmake, "-S", str(ROOT), "-B", args.build_dir,
        f"-DPICKDRAW_PYTHON={sys.executable}",
        f"-DPICKDRAW_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        f"-DPICKDRAW_BUILD_TESTS={'ON' if args.with_tests else 'OFF'}",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    if shutil.which("ninja") and not (Path(args.build_dir) / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    if with_cuda:
        archs = cuda_architectures(torch, nvcc)
        say(f"CUDA architectures: {archs} (set PICKDRAW_CUDA_ARCHS to change)")
        configure += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]
    say(f"GoogleTest binaries: {'built' if args.with_tests else 'not built (pass --with-tests)'}")
    run(configure, "CMake configuration",
        "read the first error above; a C++17 compiler (apt-get install build-essential) and "
        "nlohmann_json (pip install nlohmann-json) are needed")
    jobs = str(max(1, os.cpu_count() or 1))
    run([cmake, "--build", args.build_dir, "-j", jobs], "the build",
        "read the first compiler error above; if torch was just upgraded, delete the build folder and rerun")
    say(f"built {next(ROOT.glob('nodes/ops/_C*.so')).name} into nodes/ops/")

    if args.skip_self_check:
        say("self-check skipped (--skip-self-check)")
        return
    check = subprocess.run(
        [sys.executable, "-c", SELF_CHECK.format(root=str(ROOT))],
        capture_output=True, text=True,
    )
    if check.returncode < 0:
        sys.stderr.write(check.stderr)
        fail(
            f"the self-check crashed (signal {-check.returncode}); a crash when a C++ error is raised "
            "means the compiler's runtime does not match the one Python loads",
            "delete the build folder and rebuild with the system compiler, e.g. "
            f"CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++ {Path(sys.executable).name} install.py",
        )
    if check.returncode != 0:
        sys.stderr.write(check.stderr)
        fail("the self-check of the built library failed (output above)", "report it with the output above")
    say(
        f"self-check passed: UREMD value and gradient agree with the PyTorch reference on "
        f"{check.stdout.strip()}; C++ errors reach Python as exceptions"
    )


if __name__ == "__main__":
    main()
