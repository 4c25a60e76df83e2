"""The toy-world workflow queued on ComfyUI's own server, with dynamic VRAM (ComfyUI's default on NVIDIA GPUs since
its 2026 releases: weights streamed to the GPU layer by layer) and without it, and once at strength 0.

Checks: the guided run completes under each mode; the server says dynamic VRAM is on in the first mode where the
checkout and the machine have it; both modes give the same picture; and the guided picture differs from the strength-0
one (the guidance acted). Without CUDA every mode runs on the CPU, where ComfyUI has no dynamic VRAM: a dry run of
this script. Writes summary.json, the pictures and the server logs to --out; exits 1 when a check fails.

    COMFYUI_PATH=/path/to/ComfyUI python tests/gpu/dynamic_vram_check.py --out out/dynamic_vram
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "python"), str(ROOT / "tests" / "python" / "node_files")]

import comfyui_browser as ui  # noqa: E402
import workflow_graph as graph  # noqa: E402
from comfy_env import comfyui_path, require_comfyui  # noqa: E402

WORKFLOW = ROOT / "workflows" / "pick_and_draw_toy_world.json"
GUIDED_NODE = "PickAndDraw_GuidedKSampler"
DYNAMIC_ON = "DynamicVRAM support detected and enabled"  # ComfyUI's own log line
# Largest mean absolute difference (0-255 pixels) between the two modes' pictures: the same computation in the same
# dtype, streamed or resident, may differ by rounding only.
SAME_PICTURE = 1.0
# Smallest mean absolute difference between the guided picture and the strength-0 one for the guidance to count as
# having acted.
GUIDANCE_ACTED = 2.0


def api_prompt() -> dict:
    """The shipped toy-world workflow, as shipped, in the API form /prompt takes."""
    require_comfyui()
    return graph.to_prompt(graph.to_api(json.loads(WORKFLOW.read_text()), graph.node_registry(ROOT)))


def at_strength(prompt: dict, strength: float) -> dict:
    """A copy of `prompt` with its guided sampler at `strength`."""
    changed = json.loads(json.dumps(prompt))
    for node in changed.values():
        if node["class_type"] == GUIDED_NODE:
            node["inputs"]["strength"] = strength
    return changed


def queue_and_wait(server: ui.ComfyServer, prompt: dict, timeout_s: float = 300.0) -> list[np.ndarray]:
    """Runs `prompt` on the server; the pictures its SaveImage nodes wrote, in node order."""
    from PIL import Image

    request = urllib.request.Request(server.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        prompt_id = json.load(response)["prompt_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.url}/history/{prompt_id}", timeout=30) as response:
            entry = json.load(response).get(prompt_id)
        if entry and entry.get("status", {}).get("completed"):
            saved = [prompt_node for prompt_node, node in prompt.items() if node["class_type"] == "SaveImage"]
            files = [image for node_id in sorted(saved, key=int) for image in entry["outputs"][node_id]["images"]]
            return [np.asarray(Image.open(server.base / "output" / f.get("subfolder", "") / f["filename"]).convert("RGB"),
                               dtype=np.float32) for f in files]
        if entry and entry.get("status", {}).get("status_str") == "error":
            raise RuntimeError(f"the run failed: {json.dumps(entry['status'])[:2000]}\n{server.log_tail()}")
        time.sleep(0.5)
    raise RuntimeError(f"no result within {timeout_s:.0f} s\n{server.log_tail()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "build-device" / "out" / "dynamic_vram"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkout = comfyui_path()
    if checkout is None:
        print("ComfyUI is needed: set COMFYUI_PATH", file=sys.stderr)
        return 2
    import torch

    on_gpu = torch.cuda.is_available()
    device = () if on_gpu else ("--cpu",)
    # A feature check, not a version check: ComfyUI before its dynamic VRAM has no switch for it.
    has_switch = "--disable-dynamic-vram" in (checkout / "comfy" / "cli_args.py").read_text()
    modes = {"default": device}
    if has_switch:
        modes["dynamic VRAM off"] = (*device, "--disable-dynamic-vram")
    guided = api_prompt()
    unguided = at_strength(guided, 0.0)

    summary = {"gpu": torch.cuda.get_device_name() if on_gpu else None, "comfyui": str(checkout.name),
               "modes": {}, "failures": []}
    pictures = {}
    for mode, arguments in modes.items():
        with tempfile.TemporaryDirectory() as base_name:
            base = Path(base_name)
            ui.prepare_base_directory(base, {"comfyui-pick-and-draw": ROOT})
            log_path = out / f"server_{mode.replace(' ', '_')}.log"
            server = ui.ComfyServer(base, log_path, device_arguments=arguments)
            server.start()
            try:
                started = time.monotonic()
                pictures[mode] = queue_and_wait(server, guided)[0]
                seconds = time.monotonic() - started
                if mode == "default":
                    pictures["strength 0"] = queue_and_wait(server, unguided)[0]
            finally:
                server.stop()
            log = server.log()
        summary["modes"][mode] = {"arguments": list(arguments), "seconds": round(seconds, 1),
                                  "dynamic_vram_on": DYNAMIC_ON in log,
                                  "pack_messages": [line for line in log.splitlines() if "Pick-and-Draw" in line][:20]}
    from PIL import Image

    for name, picture in pictures.items():
        Image.fromarray(picture.astype(np.uint8)).save(out / f"{name.replace(' ', '_')}.png")

    def differ(a, b):
        return float(np.abs(pictures[a] - pictures[b]).mean())

    summary["guided_vs_strength_0"] = differ("default", "strength 0")
    if summary["guided_vs_strength_0"] < GUIDANCE_ACTED:
        summary["failures"].append(f"the guided picture is the strength-0 one (mean difference "
                                   f"{summary['guided_vs_strength_0']:.2f}): the guidance did not act")
    if "dynamic VRAM off" in pictures:
        summary["dynamic_vs_off"] = differ("default", "dynamic VRAM off")
        if summary["dynamic_vs_off"] > SAME_PICTURE:
            summary["failures"].append(f"dynamic VRAM changes the picture (mean difference {summary['dynamic_vs_off']:.2f})")
        if on_gpu and not summary["modes"]["default"]["dynamic_vram_on"]:
            summary["failures"].append("ComfyUI has dynamic VRAM but did not turn it on: the check did not test it")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
