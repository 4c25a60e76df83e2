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
"$PYTHON" -m pytest tests/python
