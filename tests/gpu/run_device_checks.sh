#!/usr/bin/env bash
# Every check that needs a GPU, in one run on a bare GPU machine (or here, where the CUDA parts
# skip), most important first, each section under a time limit (a run cut short keeps what it
# did): build the CUDA variant against that machine's torch, the guided-sampling benchmark
# (SD1.5 512/768 px), the objective-evidence report on the full SD1.5 shape, the benchmark's
# 1024 px cases (SD1.5 under a 12 GiB cap, SDXL), the naive-guidance anchor when it is given, the
# GoogleTests, the CUDA pytest cases, the strength check on the full SD1.5 shape, the UREMD
# benchmarks, the toy workflow on ComfyUI's server with dynamic VRAM and without, and a CPU-only
# build guiding CUDA tensors. Logs, JSON and PNG go to $OUT (default: build-device/out).
#
# Optional inputs, for machines without network: wheels in .whl/ (installed into a private
# target folder: nlohmann-json, and ComfyUI's av, torchsde, trampoline; for the server check also
# the rest of its requirements.txt, such as its frontend package and comfy-aimdo), Debian packages in .deb/
# (unpacked into a private prefix, e.g. libgtest-dev), a ComfyUI checkout in COMFYUI_PATH (else
# .comfyui/), and the anchor probe of the design brief in ANCHOR_PROBE.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-build-device/out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_checks.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start ))s] $*"; }

# section SECONDS COMMAND...: runs COMMAND under a time limit; a failure marks the run failed.
section() {
  local limit="$1"; shift
  timeout --signal=INT --kill-after=10 "$limit" "$@" || { echo "exit $? (limit ${limit}s): $*"; status=1; }
}
status=0
export COMFYUI_PATH="${COMFYUI_PATH:-$PWD/.comfyui}"

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

HAS_CUDA=0
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' && HAS_CUDA=1
BENCH=(tests/benchmarks/bench_guided_sampling.py)
if [ "$HAS_CUDA" = 1 ]; then
  stamp "guided sampling benchmark, SD1.5 512 and 768 px"
  section 150 "$PYTHON" "${BENCH[@]}" --cases sd1:64,sd1:96 --json "$OUT/guided_sd15.json" --profile "$OUT/profile.txt"
  stamp "objective evidence, full SD1.5 shape"
  section 120 "$PYTHON" tests/evaluation/guidance_evidence.py --model sd1-full --device cuda --steps 20 --seeds 0 1 \
    --multipliers 0 1 2 4 --out "$OUT/evidence_sd15"
  stamp "guided sampling benchmark, 1024 px (SD1.5 under a 12 GiB cap, SDXL)"
  section 150 "$PYTHON" "${BENCH[@]}" --cases sd1:128,sdxl:128 --json "$OUT/guided_1024.json"
else
  stamp "no CUDA device: guided-sampling benchmark as a smoke run on the tiny model"
  section 300 "$PYTHON" "${BENCH[@]}" --tiny --device cpu --steps 3 --json "$OUT/guided_tiny.json"
fi

if [ -d build-device/tests/native ]; then
  stamp "GoogleTest"
  CTEST="$(command -v ctest || "$PYTHON" -c 'import cmake; print(cmake.CMAKE_BIN_DIR + "/ctest")')"
  section 90 "$CTEST" --test-dir build-device --output-on-failure --timeout 80 -j8
fi

stamp "C++ exceptions into Python"
"$PYTHON" -X faulthandler -c 'import sys; sys.path.insert(0, "tests/python"); import conftest, importlib; conftest.import_pack()
ops = importlib.import_module("pickdraw_pack.nodes.ops")
try:
    ops.nearest_sigma([1.0], 100.0)
except ValueError:
    print("pickdraw: C++ exception became ValueError")'
echo "exit code $?"

stamp "pytest: the CUDA cases (UREMD, maps, recorder, engine)"
section 120 "$PYTHON" -m pytest tests/python/ops/test_uremd.py tests/python/ops/test_maps.py tests/python/ops/test_attention_recorder.py \
  tests/python/ops/test_token_attention_maps.py \
  tests/python/ops/test_guidance_engine.py -q -rs -p no:cacheprovider -k cuda

if [ "$HAS_CUDA" = 1 ]; then
  stamp "pytest: the same strength moves a step as far on the full SD1.5 shape, float16 and float32"
  section 120 "$PYTHON" -m pytest tests/python/comfy_host/test_appearance_features.py -q -rs -p no:cacheprovider \
    -k "same_strength and sd1-full"
  if [ -n "${ANCHOR_PROBE:-}" ] && [ -f "$ANCHOR_PROBE" ]; then
    stamp "naive guidance anchor (design brief), same machine"
    section 100 "$PYTHON" "$ANCHOR_PROBE" > "$OUT/anchor.log" 2>&1
    grep -E '"latent"' "$OUT/anchor.log"
  fi
  stamp "UREMD benchmark"
  section 60 "$PYTHON" tests/benchmarks/bench_uremd.py --device cuda --json "$OUT/uremd_cuda_float32.json"
fi

stamp "ComfyUI's server: the toy workflow with dynamic VRAM and without, and at strength 0 (a dry run without CUDA)"
section 240 "$PYTHON" tests/gpu/dynamic_vram_check.py --out "$OUT/dynamic_vram"

if [ "$HAS_CUDA" = 1 ]; then
  # Last, as it replaces the module the checks above used: most users' GPUs have no nvcc of torch's CUDA version,
  # and their build has no CUDA kernels; CUDA tensors then take the ATen path.
  stamp "CPU-only build guiding CUDA tensors"
  if "$PYTHON" install.py --cpu-only --build-dir build-device-cpu; then
    section 150 "$PYTHON" "${BENCH[@]}" --cases sd1:64 --steps 3 --json "$OUT/guided_sd15_cpu_only_build.json"
    section 120 "$PYTHON" -m pytest tests/python/ops/test_uremd.py tests/python/comfy_host/test_appearance_features.py \
      -q -rs -p no:cacheprovider -k "cuda or (same_strength and sd1-full)"
  else
    echo "the CPU-only build failed"; status=1
  fi
fi

stamp "done, status $status"
exit $status
