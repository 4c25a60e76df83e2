#!/usr/bin/env python3
"""Evidence that the guidance moves the sample towards its own objectives, on real ComfyUI UNets.

    COMFYUI_PATH=/path/to/ComfyUI python tests/evaluation/guidance_evidence.py --out evidence
    COMFYUI_PATH=... python tests/evaluation/guidance_evidence.py --model sd1-full --device cuda --out evidence

No weights are needed: UNets are built from ComfyUI's SD1.5/SDXL classes with random weights (tiny shapes,
or the full SD1.5 shape on a GPU), so this shows that the guidance is wired the right way round (sign,
sigma scaling, conditional rows, mask direction, template step alignment), not image quality.

As in the method's use, the layout template is the vanilla run of one prompt (the class noun) and the
guided run samples another prompt (the personalised one) with the same seed and schedule; the palette
comes from inverting a reference image. The strength is dimensionless (each guided step moves the prediction
by strength times the step's own update, each term's weight being its share of the direction), so the sweep is
in steps of --strength-unit whatever the model; the unguided runs (strength 0) give the baseline. Each
strength of the sweep runs with both terms, appearance only and layout only.
The final step's energies (UREMD to the palette, layout loss to the template) are read from the guided
run's own log. Claims checked (and printed PASS/FAIL):
  1. the template's own run (template prompt, same seed, strength 0) reproduces its layout: loss < 1e-5;
  2. with guidance, both final energies are below the unguided run's;
  3. each term's final energy does not rise as the strength rises over the sweep (its own term on);
  4. appearance-only guidance does not raise the layout energy by more than --cross-tolerance of the
     baseline, and layout-only guidance likewise for the appearance energy.
Writes evidence.json and evidence.png (energies against strength) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: the tests' shared harness (tests/python) becomes importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

MODES = {  # mode -> (appearance term on, layout term on)
    "both": (True, True),
    "appearance_only": (True, False),
    "layout_only": (False, True),
}


def build_model(comfy_env, model: str, device, dtype):
    """(patcher, family, latent side, context_dim) for --model."""
    if model == "sd1-tiny":
        return comfy_env.sharpen_cross_attention(comfy_env.tiny_sd1_patcher()), "sd1", 16, 64
    if model == "sdxl-tiny":
        return comfy_env.sharpen_cross_attention(comfy_env.tiny_sdxl_patcher()), "sdxl", 16, 64
    if model == "sd1-full":
        patcher = comfy_env.full_size_patcher("sd1", device, dtype)
        return comfy_env.sharpen_cross_attention(patcher, 5.0), "sd1", 64, 768
    raise ValueError(f"--model {model!r}: choose sd1-tiny, sdxl-tiny or sd1-full")


def final_energies(log: list[dict]) -> dict:
    last = log[-1]
    return {"appearance": last["appearance"], "layout": last["layout"], "step": last["step"]}


def run_seed(host, comfy_env, patcher, family, side, context_dim, seed, args) -> dict:
    positive_template, negative = comfy_env.subject_conditioning(family, 1000 + seed, context_dim)
    positive_run, _ = comfy_env.subject_conditioning(family, 2000 + seed, context_dim)
    palette, template = comfy_env.guidance_stores(patcher, positive_template, negative, seed, args.steps, args.cfg, side,
                                                  reference_seed=3000 + seed, palette_positive=positive_run)
    latent = {"samples": torch.zeros(1, 4, side, side)}

    def guided(positive, mode, strength, balance=(1.0, 1.0)):
        # A term that is off keeps a billionth of its weight: the engine then still computes and logs its
        # energy (a weight of 0 skips it) while its share of the gradient is negligible.
        appearance, layout = MODES[mode]
        weights = {"appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 1.0,  # both terms on every step
                   "appearance_weight": balance[0] * (1.0 if appearance else 1e-9),
                   "layout_weight": balance[1] * (1.0 if layout else 1e-9)}
        _, log = host.guided_sample(patcher,
                                    host.SamplingSettings(seed, args.steps, args.cfg, "euler", "normal", 1.0),
                                    positive, negative, latent, palette, template,
                                    host.GuidanceSettings(strength, **weights))
        return log

    own = final_energies(guided(positive_template, "both", 0.0))
    # Strength 0 moves nothing, so this run is the unguided baseline.
    baseline_log = guided(positive_run, "appearance_only", 0.0)
    balance = (1.0, 1.0)  # the direction weighs each term's unit direction by its share
    unit = args.strength_unit
    sweep = {mode: [] for mode in MODES}
    for multiplier in args.multipliers:
        for mode in MODES:
            energies = final_energies(baseline_log if multiplier == 0 else guided(positive_run, mode, multiplier * unit, balance))
            sweep[mode].append({"multiplier": multiplier, **energies})
        print(f"  seed {seed} x{multiplier:g}: " + ", ".join(
            f"{mode} A={sweep[mode][-1]['appearance']:.5g} L={sweep[mode][-1]['layout']:.5g}" for mode in MODES), flush=True)
    return {"seed": seed, "weights": {"appearance": balance[0], "layout": balance[1]}, "strength_unit": unit,
            "template_own_layout": own["layout"],
            "baseline": final_energies(baseline_log), "sweep": sweep}


def check_claims(result: dict, cross_tolerance: float) -> list[dict]:
    claims = []

    def claim(text, ok, detail):
        claims.append({"seed": result["seed"], "claim": text, "pass": bool(ok), "detail": detail})

    claim("template run reproduces its own layout (loss < 1e-5)", result["template_own_layout"] < 1e-5,
          f"layout {result['template_own_layout']:.3g}")
    base = result["baseline"]
    guided = [row for row in result["sweep"]["both"] if row["multiplier"] > 0]
    for term in ("appearance", "layout"):
        claim(f"{term} lower with guidance than without at every strength",
              all(row[term] < base[term] for row in guided),
              f"baseline {base[term]:.5g}, guided " + ", ".join(f"{row[term]:.5g}" for row in guided))
    for mode, term in (("both", "appearance"), ("both", "layout"), ("appearance_only", "appearance"),
                       ("layout_only", "layout")):
        values = [row[term] for row in result["sweep"][mode]]
        claim(f"{term} does not rise with strength ({mode})",
              all(b <= a * (1 + 1e-6) for a, b in zip(values, values[1:])), ", ".join(f"{v:.5g}" for v in values))
    for mode, term in (("appearance_only", "layout"), ("layout_only", "appearance")):
        worst = max(row[term] for row in result["sweep"][mode])
        claim(f"{mode.replace('_', ' ')} raises {term} by at most {cross_tolerance:.0%}",
              worst <= base[term] * (1 + cross_tolerance), f"baseline {base[term]:.5g}, worst {worst:.5g}")
    return claims


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"both": "-o", "appearance_only": "--s", "layout_only": ":^"}
    for axis, term in zip(axes, ("appearance", "layout")):
        for result in results:
            base = result["baseline"][term]
            for mode, rows in result["sweep"].items():
                axis.plot([row["multiplier"] for row in rows], [row[term] / base for row in rows], styles[mode],
                          label=f"{mode.replace('_', ' ')}, seed {result['seed']}", alpha=0.8)
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xlabel("strength (1: each term shifts step 0 by RMS 1)")
        axis.set_ylabel(f"final-step {term} energy / unguided")
        axis.set_title("UREMD to the palette" if term == "appearance" else "layout loss to the template")
    axes[1].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd1-tiny", help="sd1-tiny, sdxl-tiny (CPU) or sd1-full (a GPU advised)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float16", "float32"], help="sd1-full weights (default: float16 on CUDA)")
    parser.add_argument("--image-size", type=int, help="pixels per side, a multiple of 8 (default: 128 tiny, 512 full)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--strength-unit", type=float, default=0.1, help="strength of multiplier 1")
    parser.add_argument("--cross-tolerance", type=float, default=0.05)
    parser.add_argument("--out", default="guidance_evidence")
    args = parser.parse_args(argv)
    if args.multipliers[0] != 0 or sorted(args.multipliers) != args.multipliers:
        parser.error("--multipliers must start at 0 (the unguided baseline) and rise")

    import comfy_env

    host = comfy_env.host_for_script()
    if host is None:
        return 2
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    patcher, family, side, context_dim = build_model(comfy_env, args.model, device, dtype)
    if args.image_size:
        if args.image_size % 8:
            parser.error(f"--image-size {args.image_size} is not a multiple of 8")
        side = args.image_size // 8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{args.model} {str(dtype)[6:]} ({sum(p.numel() for p in patcher.model.diffusion_model.parameters()) / 1e6:.1f} M), " \
            f"{side * 8}px, {args.steps} Euler steps, cfg {args.cfg}"
    print(title, "on", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    results, claims = [], []
    for seed in args.seeds:
        result = run_seed(host, comfy_env, patcher, family, side, context_dim, seed, args)
        results.append(result)
        claims += check_claims(result, args.cross_tolerance)
    for c in claims:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  seed {c['seed']}: {c['claim']}  [{c['detail']}]")
    report = {"title": title, "model": args.model, "steps": args.steps, "cfg": args.cfg, "results": results,
              "claims": claims, "all_pass": all(c["pass"] for c in claims)}
    (out / "evidence.json").write_text(json.dumps(report, indent=1))
    plot(results, out / "evidence.png", title)
    print(f"{sum(c['pass'] for c in claims)}/{len(claims)} claims hold; wrote {out / 'evidence.json'} and {out / 'evidence.png'}")
    return 0 if report["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
