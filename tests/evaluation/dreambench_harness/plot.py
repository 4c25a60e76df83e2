"""The Pareto plot: subject fidelity (DINO, CLIP-I) against text fidelity (CLIP-T), one point per guidance strength,
the unguided baseline (strength 0) marked, the Pareto-optimal strengths joined."""

from __future__ import annotations

from pathlib import Path

from .summary import SUBJECT_METRICS

LABELS = {"dino": "DINO (subject fidelity)", "clip_i": "CLIP-I (subject fidelity)", "clip_t": "CLIP-T (text fidelity)"}


def plot_pareto(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on a server
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SUBJECT_METRICS), figsize=(6 * len(SUBJECT_METRICS), 5), squeeze=False)
    x = [entry["clip_t"] for entry in summary]
    x_error = [entry["clip_t_se"] for entry in summary]
    for axis, metric in zip(axes[0], SUBJECT_METRICS):
        y = [entry[metric] for entry in summary]
        axis.errorbar(x, y, xerr=x_error, yerr=[entry[f"{metric}_se"] for entry in summary], fmt="o-", color="tab:blue",
                      ecolor="lightsteelblue", capsize=3, label="Pick-and-Draw, by strength")
        front = sorted((px, py) for px, py, entry in zip(x, y, summary) if entry[f"pareto_{metric}"])
        axis.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:orange", label="Pareto front")
        for px, py, entry in zip(x, y, summary):
            axis.annotate(f"{entry['strength']:g}", (px, py), textcoords="offset points", xytext=(5, 5), fontsize=8)
            if entry["baseline"]:
                axis.plot([px], [py], "*", color="tab:red", markersize=16, label="unguided baseline (strength 0)")
        axis.set_xlabel(LABELS["clip_t"])
        axis.set_ylabel(LABELS[metric])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
