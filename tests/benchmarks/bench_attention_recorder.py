#!/usr/bin/env python3
"""Cost of routing attention through the recorder when it records nothing.

On the tests' small cross-attention model (tests/python/tiny_models.py; larger sizes here),
times a forward pass three ways, side by side in one run:
  plain       attention by torch's scaled_dot_product_attention directly
  unwatched   every call through AttentionRecorder.cross_attention, no layer watched
  no-guidance every call through the recorder, all layers watched, but without gradients or
              capture (a step with guidance off)
and prints each as a ratio to plain. Not part of the test suite.
    python tests/benchmarks/bench_attention_recorder.py
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # run as a script: the tests' shared harness (tests/python) becomes importable
    sys.path.insert(0, str(ROOT / "tests" / "python"))
import conftest  # noqa: E402
import tiny_models as tiny  # noqa: E402


def timed(fn, repeats):
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def main():
    conftest.import_pack()
    ops = importlib.import_module(f"{conftest.PACK_NAME}.nodes.ops")
    torch.manual_seed(0)
    model = tiny.TinyUNet(channels=64)
    x = torch.randn(2, 4, 64, 64)
    ctx = torch.randn(2, tiny.CTX_TOKENS, tiny.CTX_DIM)
    keys = ["input.1.0", "middle.0.0", "output.1.0"]
    unwatched = ops.AttentionRecorder({}, [2])
    watched = ops.AttentionRecorder({k: ops.LayerCapture(maps=True, features=True) for k in keys}, [2])
    cases = {
        "plain": tiny.sdpa_attend,
        "unwatched": tiny.recorder_attend(unwatched, [1, 0]),
        "no-guidance": tiny.recorder_attend(watched, [1, 0]),
    }
    with torch.no_grad():
        # Interleaved rounds so that drift in the machine's speed hits every case alike.
        results = {name: [] for name in cases}
        for _ in range(5):
            for name, attend in cases.items():
                results[name].append(timed(lambda: model(x, ctx, attend), 10))
    plain = statistics.median(results["plain"])
    print(f"forward of the test model, 2 x 64 x 64 latent, {torch.get_num_threads()} CPU threads")
    for name, samples in results.items():
        ms = statistics.median(samples)
        print(f"{name:>12}: {ms:8.3f} ms   ratio to plain {ms / plain:5.3f}")
    assert watched.captured_bytes == 0, "a step without guidance recorded something"


if __name__ == "__main__":
    main()
