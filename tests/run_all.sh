#!/usr/bin/env bash
# Runs every test of the pack: builds the native library and its GoogleTest binaries (incremental
# in build/), runs them through CTest, then runs the pytest suite. PYTHON selects the interpreter
# (default: python3); its torch is the one built against.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

"$PYTHON" install.py --with-tests
# ctest from PATH, else the one of the PyPI cmake package that requirements.txt installs.
CTEST="$(command -v ctest || "$PYTHON" -c 'import cmake; print(cmake.CMAKE_BIN_DIR + "/ctest")')"
"$CTEST" --test-dir build --output-on-failure --timeout 300
# A short run of the guidance-file reader's fuzzer (libFuzzer needs clang; native/fuzz/README.md records the long
# runs). It fails on any crash or sanitizer finding.
if command -v clang++ > /dev/null 2>&1; then
  CMAKE="$(command -v cmake || "$PYTHON" -c 'import cmake; print(cmake.CMAKE_BIN_DIR + "/cmake")')"
  "$CMAKE" -S native/fuzz -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release > /dev/null
  "$CMAKE" --build build/fuzz > /dev/null
  rm -rf build/fuzz/inputs && mkdir -p build/fuzz/inputs && cp native/fuzz/corpus/* build/fuzz/inputs/
  build/fuzz/fuzz_safetensors_reader -runs=200000 -print_final_stats=1 -artifact_prefix=build/fuzz/ build/fuzz/inputs 2>&1 | grep -E "^stat::number_of_executed_units|^Done"
else
  echo "clang++ not found: the fuzz run of the file reader skips"
fi
"$PYTHON" -m pytest tests/python
