#!/usr/bin/env bash
# Every check that needs a GPU, in one run on a bare GPU machine (or here, where the CUDA parts
# skip): build the CUDA variant against that machine's torch, run the GoogleTest and pytest
# suites (CUDA cases included), and run the CUDA (and CPU) UREMD benchmarks. Logs and JSON go to
# $OUT (default: build-device/out).
#
# Optional inputs, for machines without network: wheels in .whl/ (installed into a private
# target folder, e.g. nlohmann-json) and Debian packages in .deb/ (unpacked into a private
# prefix, e.g. libgtest-dev).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-build-device/out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_checks.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start ))s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pickdraw-site .whl/*.whl
  export PYTHONPATH="/tmp/pickdraw-site${PYTHONPATH:+:$PYTHONPATH}"
fi
CMAKE_EXTRA=()
if compgen -G ".deb/*.deb" > /dev/null; then
  for f in .deb/*.deb; do dpkg -x "$f" /tmp/pickdraw-prefix; done
  export CMAKE_PREFIX_PATH="/tmp/pickdraw-prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi

# Build with the distribution's own compiler when there is one. A compiler installed beside it
# with its own support files (for example a wrapper passing -B/opt/gcc/...) produced libraries
# whose C++ exceptions crashed the Python process that loaded them (every TORCH_CHECK became a
# segfault), while the same code built with /usr/bin/g++ raised proper Python errors.
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++
fi
stamp "build (CUDA kernels when the toolkit matches torch's CUDA), CXX=${CXX:-default}"
if ! "$PYTHON" install.py --with-tests --build-dir build-device; then
  stamp "build with GoogleTest failed; retrying without the native test binaries"
  rm -rf build-device/CMakeCache.txt
  "$PYTHON" install.py --build-dir build-device || { stamp "build failed"; exit 1; }
fi

status=0
if [ -d build-device/tests/native ]; then
  stamp "GoogleTest"
  CTEST="$(command -v ctest || "$PYTHON" -c 'import cmake; print(cmake.CMAKE_BIN_DIR + "/ctest")')"
  "$CTEST" --test-dir build-device --output-on-failure --timeout 300 -j4 || status=1
fi

stamp "C++ exceptions into Python (torch's and ours)"
"$PYTHON" -X faulthandler -c 'import torch
try:
    torch.ones(2) @ torch.ones(3)
except RuntimeError:
    print("torch: C++ exception became RuntimeError")'
echo "exit code $?"
"$PYTHON" -X faulthandler -c 'import sys; sys.path.insert(0, "tests/python"); import conftest, importlib; conftest.import_pack()
ops = importlib.import_module("pickdraw_pack.nodes.ops")
try:
    ops.nearest_sigma([1.0], 100.0)
except ValueError:
    print("pickdraw: C++ exception became ValueError")'
echo "exit code $?"
PYBIN="$(readlink -f "$(command -v "$PYTHON")")"
echo "python binary $PYBIN exports $(nm -D "$PYBIN" 2>/dev/null | grep -c _Unwind) _Unwind symbols"
ldd nodes/ops/_C*.so | grep -E "stdc|gcc_s|unwind" || true

stamp "pytest, one file at a time (a crash in one does not hide the others)"
for f in tests/python/test_*.py; do
  "$PYTHON" -m pytest "$f" -q -rs -p no:cacheprovider || status=1
done

stamp "UREMD benchmarks"
if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  "$PYTHON" tests/benchmarks/bench_uremd.py --device cuda --json "$OUT/uremd_cuda_float32.json" --profile || status=1
  "$PYTHON" tests/benchmarks/bench_uremd.py --device cuda --dtype float16 --json "$OUT/uremd_cuda_float16.json" || status=1
else
  echo "no CUDA device: CUDA benchmarks not run"
fi

stamp "done, status $status"
exit $status
