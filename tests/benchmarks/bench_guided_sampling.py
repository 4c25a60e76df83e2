#!/usr/bin/env python3
"""Guided sampling against a plain KSampler through real ComfyUI: wall time, time per step, peak GPU memory.

    COMFYUI_PATH=/path/to/ComfyUI python tests/benchmarks/bench_guided_sampling.py --json guided.json

Builds SD1.5- and SDXL-shaped UNets from ComfyUI's own model classes with random weights (weights do not
change speed or memory), makes a palette and a layout template with the pack's own capture passes, then
runs, side by side and with the same seed: ComfyUI's KSampler (common_ksampler, as its KSampler node) and
the pack's guided_sample (as the Guided KSampler node) with both terms on every step, both on the first half
of the steps, each term alone, the nodes' default windows, and both terms on every step with the split
pass (conditional rows with gradients, unconditional rows apart, as in ComfyUI's low-VRAM modes). Each
configuration runs once with 2 steps to warm up, then once timed. Ratios are to the plain run of the same
model and size, measured in the same process. SD1.5 at 1024 px also runs under a 12 GiB cap
(torch.cuda.set_per_process_memory_fraction).

--tiny runs the same code on a tiny SD1.x-shaped model (a smoke check; CPU timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: the tests' shared harness (tests/python) becomes importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

GIB = 2**30
BOTH_EVERY_STEP = {"appearance_end": 1.0, "layout_end": 1.0}
# (name, stores used, engine weights, batched pass); None: the pack's default choice
VARIANTS = {
    "guided_all": ("both", BOTH_EVERY_STEP, None),
    "guided_half": ("both", {"appearance_end": 0.5, "layout_end": 0.5}, None),
    "appearance_only_all": ("palette", {"appearance_end": 1.0}, None),
    "layout_only_all": ("template", {"layout_end": 1.0}, None),
    "guided_node_defaults": ("both", {"appearance_end": 0.8, "layout_end": 0.5}, None),
    "guided_all_split_pass": ("both", BOTH_EVERY_STEP, False),
}
# (family, latent side, variants, memory cap in GiB or None)
FULL_CASES = [
    ("sd1", 64, list(VARIANTS), None),
    ("sd1", 96, list(VARIANTS), None),
    ("sd1", 128, ["guided_all", "guided_half", "guided_all_split_pass"], 12.0),
    ("sdxl", 128, ["guided_all", "guided_half", "guided_all_split_pass"], None),
]
TINY_CASES = [("sd1", 16, list(VARIANTS), None)]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device, run) -> dict:
    """Wall seconds and peak allocated GiB of run() (peak only on CUDA)."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = run()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {"seconds": seconds, "peak_gib": peak, "finite": bool(torch.isfinite(out["samples"]).all())}


def bench_case(host, comfy_env, family, side, variants, cap_gib, args, device) -> dict:
    import nodes as comfy_nodes

    if args.tiny:
        patcher = comfy_env.sharpen_cross_attention(comfy_env.tiny_sd1_patcher())
        context_dim = 64
    else:
        patcher = comfy_env.full_size_patcher(family, device, torch.float16)
        context_dim = 2048 if family == "sdxl" else 768
    positive, negative = comfy_env.subject_conditioning(family, 1, context_dim)
    latent = {"samples": torch.zeros(1, 4, side, side)}
    case = {"family": family, "image_px": side * 8, "steps": args.steps, "cfg": args.cfg, "sampler": "euler",
            "memory_cap_gib": cap_gib, "unet_params_M": round(sum(p.numel() for p in patcher.model.diffusion_model.parameters()) / 1e6, 1)}
    if cap_gib is not None and device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap_gib * GIB / torch.cuda.get_device_properties(device).total_memory,
                                                   device.index or 0)
    try:
        palette, template = comfy_env.guidance_stores(patcher, positive, negative, args.seed, args.steps, args.cfg, side)

        def plain(steps):
            return comfy_nodes.common_ksampler(patcher, args.seed, steps, args.cfg, "euler", "normal", positive, negative,
                                               latent)[0]

        def guided(name, steps):
            stores, weights, batched = VARIANTS[name]
            return host.guided_sample(patcher,
                                      host.SamplingSettings(args.seed, steps, args.cfg, "euler", "normal", 1.0),
                                      positive, negative, latent, palette if stores in ("both", "palette") else None,
                                      template if stores in ("both", "template") else None,
                                      host.GuidanceSettings(args.strength, **weights), batched=batched)[0]

        plain(2)
        runs = {"plain": measure(device, lambda: plain(args.steps))}
        for name in variants:
            # a template is tied to its run's steps: warm up with a template-free variant of the same pass
            warm_batched = VARIANTS[name][2]
            host.guided_sample(patcher, host.SamplingSettings(args.seed, 2, args.cfg, "euler", "normal", 1.0),
                               positive, negative, latent, palette, None,
                               host.GuidanceSettings(args.strength, appearance_end=1.0), batched=warm_batched)
            try:
                runs[name] = measure(device, lambda: guided(name, args.steps))
            except torch.cuda.OutOfMemoryError as exc:
                runs[name] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
                torch.cuda.empty_cache()
    finally:
        if cap_gib is not None and device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device.index or 0)
    base = runs["plain"]
    for name, result in runs.items():
        if "seconds" in result:
            result["seconds_per_step"] = result["seconds"] / args.steps
            result["time_ratio"] = result["seconds"] / base["seconds"]
            if result["peak_gib"] is not None:
                result["memory_ratio"] = result["peak_gib"] / base["peak_gib"]
    case["runs"] = runs
    if args.profile and not getattr(args, "profiled", False):
        args.profiled = True
        profile_guided_steps(device, lambda: host.guided_sample(patcher,
                                                                host.SamplingSettings(args.seed, 3, args.cfg, "euler", "normal", 1.0),
                                                                positive, negative, latent, palette, None,
                                                                host.GuidanceSettings(args.strength, appearance_end=1.0)), lambda: plain(3), args.profile)
    del patcher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return case


def profile_guided_steps(device, guided_run, plain_run, path: str) -> None:
    """Op tables (self CPU time, self device time) of 3 guided and 3 plain steps, to see where a guided step's
    time goes beyond the plain step's."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tables = []
    for label, run in (("guided (palette, 3 steps)", guided_run), ("plain (3 steps)", plain_run)):
        with profile(activities=activities) as prof:
            run()
            synchronize(device)
        averages = prof.key_averages()
        tables.append(f"== {label}: by self CPU time\n" + averages.table(sort_by="self_cpu_time_total", row_limit=30))
        if device.type == "cuda":
            tables.append(f"== {label}: by self device time\n" + averages.table(sort_by="self_device_time_total", row_limit=30))
    Path(path).write_text("\n\n".join(tables))


def count_dispatched_ops(host, comfy_env, args, device) -> dict:
    """Top-level ATen ops dispatched per step by plain sampling, by a forward with gradients and a backward
    alone (the floor of any gradient guidance), and by guided (both terms, every step) sampling of the
    full SD1.5 shape (the tiny model with --tiny) at a 16 x 16 latent (the count does not depend on the size). On a GPU each op is at least
    one launch, and a launch-bound step costs about what it dispatches, so this CPU-countable number tracks
    the guided step's overhead without a GPU."""
    import nodes as comfy_nodes
    from torch.profiler import ProfilerActivity, profile

    if args.tiny:
        patcher, context_dim = comfy_env.sharpen_cross_attention(comfy_env.tiny_sd1_patcher()), 64
    else:
        patcher = comfy_env.full_size_patcher("sd1", device, torch.float16 if device.type == "cuda" else torch.float32)
        context_dim = 768
    positive, negative = comfy_env.subject_conditioning("sd1", 1, context_dim)
    steps, side = 2, 16
    latent = {"samples": torch.zeros(1, 4, side, side)}
    palette, template = comfy_env.guidance_stores(patcher, positive, negative, args.seed, steps, args.cfg, side)
    def gradient_only(call):
        """The floor: a forward with gradients over both rows and the backward of a loss on the conditional
        output, without recorder or energy."""
        import comfy.samplers

        with torch.enable_grad():
            x = call["input"].detach().clone().requires_grad_(True)
            outs = comfy.samplers.calc_cond_batch(call["model"], call["conds"], x, call["sigma"], call["model_options"])
            torch.autograd.grad(outs[0].float().pow(2).mean(), x)
        return [out.detach() for out in outs]

    floor = patcher.clone()
    floor.set_model_sampler_calc_cond_batch_function(gradient_only)
    runs = {
        "plain": lambda: comfy_nodes.common_ksampler(patcher, args.seed, steps, args.cfg, "euler", "normal", positive,
                                                     negative, latent),
        "gradient_only": lambda: comfy_nodes.common_ksampler(floor, args.seed, steps, args.cfg, "euler", "normal",
                                                             positive, negative, latent),
        "guided_all": lambda: host.guided_sample(patcher,
                                                 host.SamplingSettings(args.seed, steps, args.cfg, "euler", "normal", 1.0),
                                                 positive, negative, latent, palette, template,
                                                 host.GuidanceSettings(args.strength, **BOTH_EVERY_STEP)),
    }
    counts = {}
    for name, run in runs.items():
        run()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        top_level = [e for e in prof.events() if e.name.startswith("aten::")
                     and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
        counts[name] = len(top_level) / steps
    print(f"dispatched ATen ops per step, {'tiny SD1.x' if args.tiny else 'SD1.5'} shape: plain {counts['plain']:.0f}, "
          f"forward with gradients + backward alone {counts['gradient_only']:.0f} "
          f"({counts['gradient_only'] / counts['plain']:.2f}x), guided {counts['guided_all']:.0f} "
          f"({counts['guided_all'] / counts['plain']:.2f}x)")
    return counts


def print_case(case: dict) -> None:
    cap = f", cap {case['memory_cap_gib']} GiB" if case["memory_cap_gib"] else ""
    print(f"\n{case['family']} {case['image_px']}px, {case['steps']} steps, cfg {case['cfg']}{cap} "
          f"({case['unet_params_M']} M UNet parameters)")
    print(f"  {'run':<24}{'wall s':>9}{'ms/step':>9}{'x plain':>9}{'peak GiB':>10}{'x plain':>9}")
    for name, r in case["runs"].items():
        if "error" in r:
            print(f"  {name:<24}{r['error']}")
            continue
        peak = f"{r['peak_gib']:>10.2f}{r['memory_ratio']:>9.2f}" if r["peak_gib"] is not None else f"{'-':>10}{'-':>9}"
        flag = "" if r["finite"] else "  (non-finite output)"
        print(f"  {name:<24}{r['seconds']:>9.3f}{r['seconds_per_step'] * 1e3:>9.1f}{r['time_ratio']:>9.2f}{peak}{flag}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny SD1.x-shaped model: a smoke check of the code")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--cases", default=None,
                        help="comma-separated family:latent side (e.g. sd1:64,sdxl:128); default: all of them")
    parser.add_argument("--variants", help="comma-separated guided configurations to run (default: each case's list)")
    parser.add_argument("--profile", help="profile 3 steps of guided_all on the first case; write op tables here")
    parser.add_argument("--count-ops", action="store_true",
                        help="only count the ops a plain and a guided step dispatch (SD1.5 shape; CPU is enough)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import comfy_env

    host = comfy_env.host_for_script()
    if host is None:
        return 2
    import comfy.model_management

    device = torch.device(args.device)
    if device.type == "cuda" and args.tiny:
        print("--tiny builds its model on the CPU: use --device cpu", file=sys.stderr)
        return 2
    if args.count_ops:
        counts = count_dispatched_ops(host, comfy_env, args, device)
        if args.json:
            Path(args.json).write_text(json.dumps({"torch": torch.__version__, "ops_per_step": counts}, indent=1))
        return 0
    cases = TINY_CASES if args.tiny else FULL_CASES
    if args.cases:
        wanted = {tuple(item.split(":")) for item in args.cases.split(",")}
        cases = [c for c in cases if (c[0], str(c[1])) in wanted]
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "attention": "pytorch" if comfy.model_management.pytorch_attention_enabled() else "other",
              "strength": args.strength, "cases": []}
    print(f"device: {report['device']}, torch {report['torch']}")
    for family, side, variants, cap in cases:
        if args.variants:
            variants = [v for v in args.variants.split(",") if v in variants]
        case = bench_case(host, comfy_env, family, side, variants, cap, args, device)
        report["cases"].append(case)
        print_case(case)
        if args.json:  # after every case: a run stopped by a time limit keeps what it measured
            Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
