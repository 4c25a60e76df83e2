"""The summary of a run: per guidance strength, each score's mean over all images and its standard error, and
whether the strength is on the Pareto front of subject fidelity (DINO, CLIP-I) against text fidelity (CLIP-T)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

METRICS = ("dino", "clip_i", "clip_t")
SUBJECT_METRICS = ("dino", "clip_i")  # subject fidelity, each plotted against CLIP-T (text fidelity)
COLUMNS = ("strength", "baseline", "images", "subjects", "dino", "dino_se", "clip_i", "clip_i_se", "clip_t", "clip_t_se",
           "pareto_dino", "pareto_clip_i")


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); NaN error for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """For each (x, y), higher being better on both: True when no other point is at least as high on both and
    higher on one."""
    return [not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points) for x, y in points]


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per strength, in increasing strength; strength 0 is the unguided baseline."""
    by_strength: dict[float, list[dict]] = {}
    for row in rows:
        by_strength.setdefault(float(row["strength"]), []).append(row)
    summary = []
    for strength in sorted(by_strength):
        group = by_strength[strength]
        entry = {"strength": strength, "baseline": strength == 0.0, "images": len(group),
                 "subjects": len({row["subject"] for row in group})}
        for metric in METRICS:
            entry[metric], entry[f"{metric}_se"] = mean_and_standard_error([float(row[metric]) for row in group])
        summary.append(entry)
    for metric in SUBJECT_METRICS:
        front = pareto_optimal([(entry["clip_t"], entry[metric]) for entry in summary])
        for entry, on_front in zip(summary, front):
            entry[f"pareto_{metric}"] = on_front
    return summary


def write_summary(summary: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: f"{v:.6f}" if isinstance(v, float) and k != "strength" else v for k, v in entry.items()}
                         for entry in summary)


def format_table(summary: list[dict]) -> str:
    """The summary as aligned text for the terminal."""
    lines = [f"{'strength':>10} {'images':>6} {'DINO':>15} {'CLIP-I':>15} {'CLIP-T':>15}  note"]
    for entry in summary:
        cells = [f"{entry[m]:.4f}±{entry[f'{m}_se']:.4f}" for m in METRICS]
        note = "unguided baseline" if entry["baseline"] else ""
        lines.append(f"{entry['strength']:>10g} {entry['images']:>6} " + " ".join(f"{c:>15}" for c in cells) + f"  {note}")
    return "\n".join(lines)
