#!/usr/bin/env python3
"""The paper's claims in miniature, measured on the toy world with its judge.

    COMFYUI_PATH=/path/to/ComfyUI python tests/evaluation/toy_world/evaluate.py --out tests/evaluation/toy_world/results

Cells (each over --seeds seeds x the prompts below, the same seeds in every cell):
  vanilla             the base model, class-noun prompts ("a ball in the snow on the left"), unguided
  vanilla+palette     the same with a palette picked from one reference picture (no training), per strength
  lora                the personalised LoRA ("a sks ball in the snow on the left"), unguided
  lora+pick-and-draw  the LoRA with the palette and the vanilla model's layout template, per strength
  lora+appearance     the LoRA, appearance term alone (default strength)
  lora+layout         the LoRA, layout term alone (default strength)
Scores by the judge (judge.py), which knows the world's rules and nothing of the guidance:
  identity        share of the reference subject's attributes (body colour, pattern, pattern colour) matched
  class           the prompted class drawn
  fidelity        mean of: the prompted scene drawn, the prompted position word obeyed
  diversity       spread of the subject boxes' centres over seeds for one prompt (mean distance to their mean,
                  in image widths), averaged over prompts
  agreement       IoU of the subject box with the template's (cells that use a template)
  reference scene share of pictures in which the judge reads the reference picture's scene (on the grass, which no
                  prompt asks for): the reference's background carried into the picture
  size            the subject box's longer side, in image widths
Confidence intervals: 95% percentile bootstrap over seeds (each resample draws seeds with replacement and keeps
every prompt of a drawn seed). Every cell but the vanilla one is also compared with its baseline on the same seeds
and prompts (the LoRA with the vanilla model, a guided cell with the same model unguided): the difference of each
score with a paired bootstrap interval (both cells resampled with the same seeds); an interval that excludes 0 is a
measured change. Writes results.json, the tables (table.md) and the Pareto plot (pareto.png), and one grid per
prompt (reference | template | LoRA unguided | Pick-and-Draw) for the first seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if __name__ == "__main__":  # run as a script: the toy_world package and the tests' shared harness become importable
    sys.path[:0] = [str(HERE.parent), str(ROOT / "tests" / "python")]

from toy_world import judge, world  # noqa: E402
from toy_world.sampling import CLASS, PERSONAL_NAME, PROMPTS, REFERENCE, Toy, iou, prompt_label, prompt_text  # noqa: E402

def scores(reading: judge.Reading, reference: world.Subject, cls: str, scene: str, position: str | None,
           reference_scene: str | None = None) -> dict:
    """Identity (the reference's attributes), class, prompt fidelity (the scene and, where the prompt has one, the
    position word obeyed), the reference's scene read instead of the prompted one, and the subject's size."""
    obeyed = [reading.scene == scene] + ([position in reading.position_words()] if position else [])
    box = reading.box
    return {
        "identity": float(np.mean([a == b for a, b in zip(reading.identity(), reference.identity())])),
        "class": float(reading.cls == cls),
        "fidelity": float(np.mean(obeyed)),
        "reference scene": float(reference_scene is not None and reading.scene == reference_scene),
        "size": max(box[2] - box[0], box[3] - box[1]) / world.SIZE if box is not None else 0.0,
        "box": list(box) if box is not None else None,
    }


def diversity(rows: list[dict]) -> float:
    """Mean over the prompts without a position word (where the model chooses the place) of the mean distance of the
    box centres to their mean, in image widths."""
    per_prompt = []
    for prompt in sorted({r["prompt"] for r in rows if not r["positioned"]}):
        centres = np.array([[(r["box"][0] + r["box"][2]) / 2, (r["box"][1] + r["box"][3]) / 2]
                            for r in rows if r["prompt"] == prompt and r["box"] is not None]) / world.SIZE
        if len(centres) >= 2:
            per_prompt.append(float(np.linalg.norm(centres - centres.mean(0), axis=1).mean()))
    return float(np.mean(per_prompt)) if per_prompt else 0.0


SCORES = ("identity", "class", "fidelity", "diversity", "agreement", "reference scene", "size")


def measure(rows: list[dict]) -> dict:
    """Every score of one cell's rows: means over pictures, diversity over prompts."""
    out = {key: float(np.mean([r[key] for r in rows])) for key in ("identity", "class", "fidelity", "reference scene", "size")}
    out["diversity"] = diversity(rows)
    if all("agreement" in r for r in rows):
        out["agreement"] = float(np.mean([r["agreement"] for r in rows]))
    return out


def _resample(by_seed: dict, drawn) -> list[dict]:
    # a seed drawn twice counts twice; diversity needs distinct rows, so relabel the seed copies
    return [dict(r, seed=(s, i)) for i, s in enumerate(drawn) for r in by_seed[s]]


def _interval(point: dict, boots: list[dict]) -> dict:
    return {key: {"mean": value, "low": float(np.percentile([b[key] for b in boots], 2.5)),
                  "high": float(np.percentile([b[key] for b in boots], 97.5))} for key, value in point.items()}


def summarise(rows: list[dict], rng: np.random.Generator, resamples: int = 1000) -> dict:
    """Means and 95% bootstrap intervals (seeds resampled with all their prompts) of every score."""
    seeds = sorted({r["seed"] for r in rows})
    by_seed = {s: [r for r in rows if r["seed"] == s] for s in seeds}
    boots = [measure(_resample(by_seed, rng.choice(seeds, size=len(seeds), replace=True))) for _ in range(resamples)]
    return _interval(measure(rows), boots)


def paired_difference(rows: list[dict], baseline: list[dict], rng: np.random.Generator, resamples: int = 1000) -> dict:
    """The cell's scores minus its baseline's on the same seeds and prompts, with 95% paired bootstrap intervals:
    each resample draws one set of seeds for both cells, so the seed-to-seed spread they share cancels."""
    seeds = sorted({r["seed"] for r in rows})
    if seeds != sorted({r["seed"] for r in baseline}):
        raise ValueError("a cell and its baseline must be measured on the same seeds")
    ours = {s: [r for r in rows if r["seed"] == s] for s in seeds}
    theirs = {s: [r for r in baseline if r["seed"] == s] for s in seeds}

    def difference(a: dict, b: dict) -> dict:
        return {key: a[key] - b[key] for key in a if key in b}

    point = difference(measure(rows), measure(baseline))
    boots = []
    for _ in range(resamples):
        drawn = rng.choice(seeds, size=len(seeds), replace=True)
        boots.append(difference(measure(_resample(ours, drawn)), measure(_resample(theirs, drawn))))
    return _interval(point, boots)


def baseline_of(cell: str) -> str | None:
    """The cell a cell is compared with: the LoRA with the vanilla model, a guided cell with its model unguided."""
    if cell == "vanilla":
        return None
    return "vanilla" if cell == "lora" or cell.startswith("vanilla+") else "lora"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the seeds are first-seed .. first-seed + seeds - 1 (a confirmation on seeds not seen before)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--strengths", default="0.1,0.2,0.3,0.6,1.0")
    parser.add_argument("--default-strength", type=float, default=0.2)
    parser.add_argument("--grid-seeds", type=int, default=4)
    parser.add_argument("--accuracy-seeds", type=int, default=3, help="seeds per class and scene for the drawing accuracy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", help="a training run's folder (train.py --out) instead of the shipped weights")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only measure how often the model draws the prompted class and scene, and print it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    strengths = [float(s) for s in args.strengths.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    toy = Toy(args.steps, args.cfg, args.weights)
    if args.accuracy_only:
        print(json.dumps(prompted_accuracy(toy, args.accuracy_seeds)[0]), flush=True)
        return 0
    if toy.lora_model is None:
        raise SystemExit(f"--weights {args.weights}: no LoRA there (train.py --stages lora); --accuracy-only needs none")
    from PIL import Image

    reference_image = np.asarray(Image.open(toy.toy_nodes.REFERENCES / f"{REFERENCE}.png").convert("RGB"))
    reference_prompt = (toy.toy_nodes.REFERENCES / f"{REFERENCE}.txt").read_text().strip()
    reference = judge.read(reference_image)
    reference_scene = next((scene for scene in world.SCENES if scene in reference_prompt), None)
    truth = world.Subject("ball", "purple", "stripes", "white")
    if reference.identity() != truth.identity():
        print(f"warning: the judge reads the reference as {reference.identity()}, not {truth.identity()}", flush=True)
    personal_name, cls = PERSONAL_NAME, CLASS
    palettes = {
        "vanilla": toy.palette(toy.model, reference_image, reference_prompt.replace(personal_name, cls), cls),
        "lora": toy.palette(toy.lora_model, reference_image, reference_prompt, personal_name),
    }
    cells: dict[str, list[dict]] = {}
    grids: dict[str, list[list[np.ndarray]]] = {}

    def record(cell, seed, scene, position, image, template_box=None, extra=None):
        reading = judge.read(image)
        row = {"seed": seed, "prompt": prompt_label(scene, position), "positioned": position is not None,
               **scores(reading, truth, cls, scene, position, reference_scene), **(extra or {})}
        if template_box is not None or cell.startswith("lora+") or cell.startswith("vanilla+"):
            row["agreement"] = iou(reading.box, template_box)
        cells.setdefault(cell, []).append(row)
        return row

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for scene, position in PROMPTS:
            vanilla_text = prompt_text(cls, scene, position)
            personal_text = prompt_text(personal_name, scene, position)
            template, template_latent = toy.template(seed, vanilla_text, cls)
            template_image = toy.decode(template_latent)
            template_box = judge.read(template_image).box
            record("vanilla", seed, scene, position, template_image, template_box)
            for strength in strengths:
                image = toy.sample(toy.model, seed, vanilla_text, cls, palette=palettes["vanilla"], strength=strength)
                record(f"vanilla+palette@{strength:g}", seed, scene, position, image, template_box)
            lora_image = toy.sample(toy.lora_model, seed, personal_text, personal_name)
            record("lora", seed, scene, position, lora_image, template_box)
            for strength in strengths:
                image = toy.sample(toy.lora_model, seed, personal_text, personal_name, palettes["lora"], template, strength)
                record(f"lora+pick-and-draw@{strength:g}", seed, scene, position, image, template_box)
                if strength == args.default_strength and seed < args.first_seed + args.grid_seeds:
                    grids.setdefault(prompt_label(scene, position), []).append([reference_image, template_image, lora_image, image])
            for term, weights in (("appearance", (1.0, 0.0)), ("layout", (0.0, 1.0))):
                image = toy.sample(toy.lora_model, seed, personal_text, personal_name, palettes["lora"], template,
                                   args.default_strength, *weights)
                record(f"lora+{term}@{args.default_strength:g}", seed, scene, position, image, template_box)
        print(f"[{time.time() - started:6.0f} s] seed {seed + 1 - args.first_seed}/{args.seeds}", flush=True)

    accuracy, drawn = prompted_accuracy(toy, args.accuracy_seeds)
    print(f"the toy model draws the prompted class {accuracy['class']:.3f} and scene {accuracy['scene']:.3f} of the time "
          f"({len(drawn)} pictures)", flush=True)

    rng = np.random.default_rng(0)
    summary = {cell: summarise(rows, rng) for cell, rows in cells.items()}
    differences = {cell: {"baseline": baseline_of(cell), **paired_difference(rows, cells[baseline_of(cell)], rng)}
                   for cell, rows in cells.items() if baseline_of(cell) is not None}
    for values in differences.values():
        if values["baseline"] == "vanilla":
            values.pop("agreement", None)  # the vanilla pictures are the templates themselves: agreement 1 by construction
    results = {"command": "python tests/evaluation/toy_world/evaluate.py " + " ".join(sys.argv[1:]),
               "settings": vars(args), "reference": REFERENCE, "reference_read_as": list(reference.identity()),
               "seconds": round(time.time() - started), "prompted_accuracy": accuracy, "summary": summary, "differences": differences, "rows": cells,
               "prompted_pictures": drawn}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_table(summary, differences, accuracy, out / "table.md", results["command"])
    plot(summary, out / "pareto.png")
    for name, rows in grids.items():
        grid = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
        Image.fromarray(grid).save(out / f"grid_{name.replace(' ', '_')}.png")
    print(f"wrote {out}", flush=True)
    return 0


def prompted_accuracy(toy, seeds: int) -> tuple[dict, list[dict]]:
    """Does the toy model draw what it is asked? Every class in every scene, class-noun prompts, unguided, read by
    the judge: ({"class", "scene", "pictures", "class_by_class"}, the readings); class_by_class is the share of each
    asked class read as itself."""
    drawn = []
    for cls_asked in world.CLASSES:
        for scene in world.SCENES:
            for seed in range(seeds):
                reading = judge.read(toy.sample(toy.model, 1000 + seed, f"a {cls_asked} {scene}", cls_asked))
                drawn.append({"class": cls_asked, "scene": scene, "seed": seed, "class_read": reading.cls,
                              "scene_read": reading.scene})
    accuracy = {"class": float(np.mean([d["class"] == d["class_read"] for d in drawn])),
                "scene": float(np.mean([d["scene"] == d["scene_read"] for d in drawn])), "pictures": len(drawn),
                "class_by_class": {cls: float(np.mean([d["class_read"] == cls for d in drawn if d["class"] == cls]))
                                   for cls in world.CLASSES}}
    return accuracy, drawn


def write_table(summary: dict, differences: dict, accuracy: dict, path: Path, command: str) -> None:
    def cell_text(values: dict, key: str, signed: bool = False) -> str:
        if key not in values:
            return "-"
        v = values[key]
        form = "{:+.3f}" if signed else "{:.3f}"
        return f"{form.format(v['mean'])} [{form.format(v['low'])}, {form.format(v['high'])}]"

    lines = [f"Command: `{command}` (results.json beside this file). Means with 95% bootstrap intervals over seeds.", "",
             f"Unguided class-noun prompts, every class in every scene ({accuracy['pictures']} pictures): the judge reads "
             f"the prompted class in {accuracy['class']:.1%} and the prompted scene in {accuracy['scene']:.1%}.", "",
             "| cell | " + " | ".join(SCORES) + " |", "|---|" + "---|" * len(SCORES)]
    lines += [f"| {cell} | " + " | ".join(cell_text(values, k) for k in SCORES) + " |" for cell, values in summary.items()]
    lines += ["", "Each cell minus its baseline on the same seeds and prompts, with 95% paired bootstrap intervals "
              "(an interval that excludes 0 is a measured change):", "",
              "| cell | baseline | " + " | ".join(SCORES) + " |", "|---|---|" + "---|" * len(SCORES)]
    lines += [f"| {cell} | {values['baseline']} | " + " | ".join(cell_text(values, k, signed=True) for k in SCORES) + " |"
              for cell, values in differences.items()]
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    for family, marker in (("vanilla", "o"), ("lora", "s")):
        points = sorted((float(cell.split("@")[1]) if "@" in cell else 0.0, v["fidelity"]["mean"], v["identity"]["mean"])
                        for cell, v in summary.items()
                        if cell == family or cell.startswith(f"{family}+palette@") or cell.startswith(f"{family}+pick-and-draw@"))
        axis.plot([p[1] for p in points], [p[2] for p in points], marker=marker, label=family)
        for strength, x, y in points:
            axis.annotate(f"{strength:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set_xlabel("prompt fidelity (scene, position)")
    axis.set_ylabel("identity (attributes of the reference)")
    axis.set_title("Toy world: identity vs prompt fidelity over guidance strength")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
