#!/usr/bin/env python3
"""Where the toy model's cross-attention maps of the subject token point: for each layer, how well its map
separates the subject from the background of the picture it helps draw.

    COMFYUI_PATH=/path/to/ComfyUI python tests/evaluation/toy_world/subject_maps.py --out tests/evaluation/toy_world/results

The vanilla model draws class-noun prompts (every class in every scene, --seeds seeds each) while the pack records
the subject's map of every cross-attention layer at every step, as a layout template does. The judge reads the
subject's mask from the finished picture. A map's score is the area under the ROC curve of its values against that
mask (pooled to the map's grid): 1 when every subject token outweighs every background token, 0.5 when the map
does not tell them apart, below 0.5 when it points at the background. Writes subject_maps.md and
subject_maps.json: per layer and per group of layers (their maps averaged, as the saliency mask and the layout
loss average them), the mean score over pictures at the first, middle and last steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if __name__ == "__main__":  # run as a script: the toy_world package and the tests' shared harness become importable
    sys.path[:0] = [str(HERE.parent), str(ROOT / "tests" / "python")]

from toy_world import judge, world  # noqa: E402
from toy_world.sampling import Toy  # noqa: E402


def roc_auc(score: np.ndarray, inside: np.ndarray) -> float:
    """P(a subject token's value > a background token's), ties counted half; NaN if either side is empty."""
    positive, negative = score[inside], score[~inside]
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    above = (positive[:, None] > negative[None, :]).mean()
    tied = (positive[:, None] == negative[None, :]).mean()
    return float(above + 0.5 * tied)


def layer_groups(toy: Toy, keys: list[str]) -> dict[str, list[str]]:
    """The groups the pack averages (every layer for the layout loss; the appearance layers at the toy model's
    latent size for the saliency mask) and the decoder's layers by token grid."""
    table = toy.host.layer_table(toy.model)
    height, width = toy.latent["samples"].shape[-2:]
    groups = {"every layer (layout)": list(keys),
              "appearance layers (saliency mask)": table.default_appearance_layers(height, width)}
    for key in keys:
        if key.startswith("output."):
            grid = table.token_grid(key, height, width)
            groups.setdefault(f"decoder at {grid[0]}x{grid[1]}", []).append(key)
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per class and scene")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cfg", type=float, default=5.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    toy = Toy(args.steps, args.cfg)
    scores: dict[tuple[str, int], list[float]] = {}
    groups: dict[str, list[str]] = {}
    pictures = 0
    picked = (0, args.steps // 2, args.steps - 1)
    for cls in world.CLASSES:
        for scene in world.SCENES:
            for seed in range(args.seeds):
                template, latent = toy.template(3000 + seed, f"a {cls} {scene}", cls)
                reading = judge.read(toy.decode(latent))
                if reading.mask is None:
                    continue
                pictures += 1
                keys = list(template.metadata.layer_keys)
                groups = groups or layer_groups(toy, keys)
                mask = torch.from_numpy(reading.mask.astype(np.float32))[None, None]
                for step in picked:
                    maps = {key: template.get(step, key).float()[0] for key in keys}
                    named = {key: [key] for key in keys} | groups
                    for name, members in named.items():
                        grid = maps[members[-1]].shape[-2:]
                        average = torch.stack([torch.nn.functional.interpolate(maps[k][None, None], size=tuple(grid),
                                                                               mode="bilinear", antialias=True)[0, 0]
                                               for k in members]).mean(0)
                        inside = torch.nn.functional.adaptive_avg_pool2d(mask, tuple(grid))[0, 0] > 0.5
                        scores.setdefault((name, step), []).append(roc_auc(average.flatten().numpy(),
                                                                           inside.flatten().numpy()))
    names = list(dict.fromkeys(name for name, _ in scores))
    table = {name: {str(step): round(float(np.nanmean(scores[(name, step)])), 3) for step in picked} for name in names}
    command = "python tests/evaluation/toy_world/subject_maps.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "subject_maps.json").write_text(json.dumps({"command": command, "pictures": pictures,
                                                            "steps": list(picked), "groups": groups,
                                                            "auc": table}, indent=1))
    lines = [f"Command: `{command}`", "",
             f"Area under the ROC curve of the subject token's map against the judge's subject mask, mean over "
             f"{pictures} pictures of the vanilla model (0.5: no separation; below 0.5: the map points at the "
             f"background), at steps {', '.join(str(s + 1) for s in picked)} of {args.steps}.", "",
             "| layers | " + " | ".join(f"step {s + 1}" for s in picked) + " |", "|---|" + "---|" * len(picked)]
    for name in names:
        members = f" ({', '.join(groups[name])})" if name in groups else ""
        lines.append(f"| {name}{members} | " + " | ".join(f"{table[name][str(s)]:.3f}" for s in picked) + " |")
    (args.out / "subject_maps.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
