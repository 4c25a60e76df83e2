#!/usr/bin/env python3
"""Pick-and-Draw on DreamBench, one command (see the README's "DreamBench evaluation"):

    COMFYUI_PATH=/path/to/ComfyUI python tests/evaluation/dreambench.py --dataset /path/to/dreambooth/dataset \\
        --checkpoint v1-5-pruned-emaonly.safetensors --strengths 0,0.5,1,2 --out dreambench_out

    torchrun --nproc_per_node 8 tests/evaluation/dreambench.py ...   (the same arguments: one slice per GPU)

Smoke run, no downloads: ``--tiny-random-models`` instead of ``--checkpoint``.
"""

import sys
from pathlib import Path

# The harness (dreambench_harness/) is found beside this script, as Python puts a script's folder on sys.path; the
# tests' shared ComfyUI helpers (tests/python) are added, once, here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from dreambench_harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
