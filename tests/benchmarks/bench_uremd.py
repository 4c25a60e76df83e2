#!/usr/bin/env python3
"""UREMD benchmark: the native kernel against torch's plain version, measured side by side.

Plain version (what a straightforward implementation writes, and what design section 7 measured):
    loss = (1 - normalize(G) @ normalize(P).T).min(-1).values.mean()
Both are timed for the forward alone and for forward + backward to the generated features
(the guidance use: the palette needs no gradient). Scratch memory is the peak memory an
evaluation adds on top of its inputs: CUDA's allocator statistics on the GPU; on the CPU the
growth of the process's peak resident set, each case in a fresh process.

Prints a table of ratios (plain / native) and writes JSON. Not part of the test suite: timings
belong to a run made on purpose.
    python tests/benchmarks/bench_uremd.py --device cpu --json uremd_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(256, 256, 1280), (1024, 1024, 640), (4096, 4096, 320)]


def load_ops():
    # The pack as a package without its root __init__.py (ComfyUI's entry point, which needs ComfyUI).
    if "pickdraw_bench" not in sys.modules:
        pack = types.ModuleType("pickdraw_bench")
        pack.__path__ = [str(ROOT)]
        sys.modules["pickdraw_bench"] = pack
    from pickdraw_bench.nodes import ops

    return ops


def plain_uremd(g, p):
    return (1 - F.normalize(g, dim=-1) @ F.normalize(p, dim=-1).transpose(-1, -2)).min(-1).values.mean(-1)


def make_case(impl: str, n: int, m: int, c: int, device: str, dtype: torch.dtype, backward: bool):
    ops = load_ops() if impl == "native" else None
    g = torch.randn(1, n, c, device=device, dtype=dtype, requires_grad=backward)
    p = torch.randn(1, m, c, device=device, dtype=dtype)
    fn = ops.uremd if impl == "native" else plain_uremd

    def run():
        if backward:
            (grad,) = torch.autograd.grad(fn(g, p).sum(), g)
            return grad
        with torch.no_grad():
            return fn(g, p)

    return run


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_case(run, device, repeats):
    for _ in range(3):
        run()
    sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def cuda_scratch_mib(run):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    out_bytes = out.numel() * out.element_size()
    return (peak - out_bytes) / 2**20


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_scratch_child(impl, n, m, c, dtype_name, backward):
    """Runs in a fresh process: peak RSS growth of one evaluation, after a small warm-up.

    Writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS (Linux >= 4.0),
    so the peak afterwards is the evaluation's own high-water mark.
    """
    dtype = getattr(torch, dtype_name)
    make_case(impl, 64, 64, c, "cpu", dtype, backward)()  # initialise libraries and thread pools
    run = make_case(impl, n, m, c, "cpu", dtype, backward)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run()
    after = _status_kib("VmHWM")
    print(json.dumps({"scratch_mib": (after - before) / 1024}))


def cpu_scratch_mib(impl, n, m, c, dtype, backward):
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_uremd as b; "
        f"b.cpu_scratch_child({impl!r}, {n}, {m}, {c}, {str(dtype).removeprefix('torch.')!r}, {backward})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["scratch_mib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=0, help="timed repetitions (default: 30 on CUDA, 7 on CPU)")
    parser.add_argument("--shapes", default="", help="override, e.g. '1024x1024x640,4096x4096x320'")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's kernel table of the native fwd+bwd at the last shape")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (30 if args.device == "cuda" else 7)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    ops = load_ops()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"UREMD benchmark on {device_name}, {args.dtype}, torch {torch.__version__}, native build {ops.build_info()}")
    header = f"{'N x M x C':>18} {'pass':>8} {'plain ms':>9} {'native ms':>9} {'speed-up':>8} {'plain MiB':>9} {'native MiB':>10} {'mem ratio':>9}"
    print(header)
    rows = []
    for n, m, c in shapes:
        for backward in (False, True):
            row = {"n": n, "m": m, "c": c, "pass": "fwd+bwd" if backward else "fwd", "dtype": args.dtype, "device": device_name}
            for impl in ("plain", "native"):
                run = make_case(impl, n, m, c, args.device, dtype, backward)
                row[f"{impl}_ms"] = time_case(run, args.device, repeats)
                if args.device == "cuda":
                    row[f"{impl}_scratch_mib"] = cuda_scratch_mib(run)
                else:
                    row[f"{impl}_scratch_mib"] = cpu_scratch_mib(impl, n, m, c, dtype, backward)
                del run
            row["speedup"] = row["plain_ms"] / row["native_ms"]
            # Below ~0.1 MiB the measurement is allocator noise, not a ratio worth printing.
            row["memory_ratio"] = row["native_scratch_mib"] / row["plain_scratch_mib"] if row["plain_scratch_mib"] >= 0.1 else None
            rows.append(row)
            print(
                f"{f'{n}x{m}x{c}':>18} {row['pass']:>8} {row['plain_ms']:9.3f} {row['native_ms']:9.3f} {row['speedup']:7.2f}x "
                f"{row['plain_scratch_mib']:9.1f} {row['native_scratch_mib']:10.1f} "
                + (f"{row['memory_ratio']:9.3f}" if row["memory_ratio"] is not None else f"{'n/a':>9}"),
                flush=True,
            )
    if args.profile:
        n, m, c = shapes[-1]
        run = make_case("native", n, m, c, args.device, dtype, True)
        run()
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(10):
                run()
            sync(args.device)
        sort = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
