#!/usr/bin/env python3
"""Where a guided step's extra memory goes: the bytes autograd keeps for the backward, by UNet part.

    COMFYUI_PATH=/path/to/ComfyUI python tests/benchmarks/guided_step_memory.py --json memory.json

A plain KSampler step keeps nothing for a backward; a guided step keeps every tensor that the backward of
its energy needs, and that (with the weights) sets its peak. This counts those tensors while one guided step
runs through ComfyUI (the pack's guided_sample, both terms on, the batched and the split pass), each storage
once, and charges it to the innermost UNet module running when autograd saved it. Sizes do not depend on the
device: on the CPU, bfloat16 (2 bytes, as float16 on a GPU) gives the figures of a float16 GPU run, except
that attention kernels keep backend-specific extras (a few MiB). --tiny runs the tiny SD1.x-shaped model.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: the tests' shared harness (tests/python) becomes importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

MIB = 2**20


class SavedTensorLedger:
    """Counts the storages autograd saves while it is active, charged to the module running at the time."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.running: list[str] = []
        self.bytes_by_module: dict[str, int] = collections.Counter()
        self.kind_of: dict[str, str] = {}
        self._seen: set[tuple[int, int]] = set()
        self._weights: set[tuple[int, int]] | None = None
        self._handles = []

    def _pack(self, tensor):
        if self._weights is None:  # read at the first save: the guided step may replace the weight tensors before it
            self._weights = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
                             for t in (*self.model.parameters(), *self.model.buffers())}
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in self._weights:  # a weight saved by its matmul costs nothing: the model holds it anyway
            return tensor
        if key not in self._seen:  # the same activation saved by several ops (or as views) is kept once
            self._seen.add(key)
            self.bytes_by_module[self.running[-1] if self.running else "(outside the UNet)"] += storage.nbytes()
        return tensor

    def __enter__(self):
        def entering(name):
            def hook(module, args) -> None:
                self.running.append(name)
            return hook

        def leaving(module, args, output) -> None:
            self.running.pop()

        for name, module in self.model.named_modules():
            self.kind_of[name] = type(module).__name__
            self._handles.append(module.register_forward_pre_hook(entering(name)))
            self._handles.append(module.register_forward_hook(leaving))
        self._saving = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._saving.__enter__()
        return self

    def __exit__(self, *exc):
        self._saving.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def total(self) -> int:
        return sum(self.bytes_by_module.values())

    def by(self, part) -> dict[str, int]:
        """Bytes grouped by part(module name, module kind), largest first."""
        grouped = collections.Counter()
        for name, nbytes in self.bytes_by_module.items():
            grouped[part(name, self.kind_of.get(name, ""))] += nbytes
        return dict(grouped.most_common())


def unet_block(name: str, kind: str) -> str:
    """'output_blocks.9' for any module under it; the UNet's own top-level layers by name."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("input_blocks", "output_blocks") else parts[0] or "(UNet)"


def module_kind(name: str, kind: str) -> str:
    """The module's class, with the two attentions of a transformer block told apart. ComfyUI calls an attn2
    replace patch (the pack's recorder, on watched layers) from the transformer block itself, so what the
    recorder keeps shows as BasicTransformerBlock."""
    last = name.rsplit(".", 1)[-1]
    return f"{kind} ({last})" if last in ("attn1", "attn2") else kind or "(outside the UNet)"


@contextlib.contextmanager
def pytorch_attention():
    """ComfyUI's PyTorch (SDPA) attention, which it picks on GPUs, while the block runs. On the CPU it picks
    sub-quadratic attention, whose backward keeps chunks of the attention matrix (about 60% of the total at
    512 px) that a GPU run never holds."""
    import comfy.ldm.modules.attention as attention

    chosen = attention.optimized_attention, attention.optimized_attention_masked
    attention.optimized_attention = attention.optimized_attention_masked = attention.attention_pytorch
    try:
        yield
    finally:
        attention.optimized_attention, attention.optimized_attention_masked = chosen


def measure(host, comfy_env, args) -> dict:
    with pytorch_attention() if args.attention == "pytorch" else contextlib.nullcontext():
        return _measure(host, comfy_env, args)


def _measure(host, comfy_env, args) -> dict:
    if args.tiny:
        patcher = comfy_env.sharpen_cross_attention(comfy_env.tiny_sd1_patcher())
        family, context_dim = "sd1", 64
    else:
        family = args.family
        patcher = comfy_env.full_size_patcher(family, "cpu", getattr(torch, args.dtype))
        context_dim = 2048 if family == "sdxl" else 768
    positive, negative = comfy_env.subject_conditioning(family, 1, context_dim)
    steps = 1  # one guided step: the stores need entries for that step only
    palette, template = comfy_env.guidance_stores(patcher, positive, negative, args.seed, steps, 7.5, args.side)
    latent = {"samples": torch.zeros(1, 4, args.side, args.side)}
    report = {"family": "tiny sd1" if args.tiny else family, "dtype": args.dtype, "attention": args.attention,
              "latent_side": args.side,
              "image_px": args.side * 8, "passes": {}}
    for label, batched in (("batched", True), ("split", False)):
        with SavedTensorLedger(patcher.model.diffusion_model) as ledger:
            host.guided_sample(patcher, host.SamplingSettings(args.seed, steps, 7.5, "euler", "normal", 1.0),
                               positive, negative, latent, palette, template,
                               host.GuidanceSettings(1.0, appearance_end=1.0, layout_end=1.0), batched=batched)
        report["passes"][label] = {"total_mib": ledger.total() / MIB,
                                   "by_block_mib": {k: v / MIB for k, v in ledger.by(unet_block).items()},
                                   "by_kind_mib": {k: v / MIB for k, v in ledger.by(module_kind).items()}}
    return report


def print_report(report: dict, rows: int) -> None:
    print(f"{report['family']} at {report['image_px']} px ({report['dtype']}, {report['attention']} attention): "
          "bytes kept for the backward of one guided step")
    for label, found in report["passes"].items():
        print(f"\n  {label} pass: {found['total_mib']:.1f} MiB")
        for title, key in (("by module kind", "by_kind_mib"), ("by UNet block", "by_block_mib")):
            print(f"    {title}:")
            for part, mib in list(found[key].items())[:rows]:
                print(f"      {part:<34}{mib:>9.1f} MiB {100 * mib / found['total_mib']:>5.1f}%")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    parser.add_argument("--side", type=int, default=64, help="latent side (64: 512 px)")
    parser.add_argument("--dtype", default="bfloat16", help="weights' dtype on the CPU (bfloat16: float16's size)")
    parser.add_argument("--attention", choices=("pytorch", "comfyui-cpu-default"), default="pytorch",
                        help="ComfyUI's attention for the UNet's own layers (pytorch: as on a GPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny SD1.x-shaped model (a smoke check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=12, help="parts listed per table")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.side, args.dtype = min(args.side, 16), "float32"

    import comfy_env

    host = comfy_env.host_for_script()
    if host is None:
        return 2
    report = measure(host, comfy_env, args)
    print_report(report, args.rows)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
