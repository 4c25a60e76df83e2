"""The command: arguments, the job list, this rank's share of it, and the outputs. See the README's
"DreamBench evaluation" section, or ``python tests/evaluation/dreambench.py --help``."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

from . import dataset, results, sharding, summary
from .encoders import CLIP_REPO, DINO_REPO, EncoderMissing

# DreamBooth generates four images per subject and prompt (arXiv 2208.12242, section 4.1): 30 x 25 x 4 = 3,000.
DREAMBOOTH_SEEDS = 4
TINY_DEFAULTS = {"size": 64, "steps": 3, "strengths": "0,1e4"}  # tiny random UNet: its strength scale is ~1e4
REAL_DEFAULTS = {"size": 512, "steps": 20}


def _numbers(text: str, kind, option: str) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a comma-separated list of {kind.__name__} values") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dreambench.py",
        description="Pick-and-Draw on DreamBench: images for every (subject, prompt, seed, strength), scored with DINO, "
                    "CLIP-I and CLIP-T (DreamBooth, arXiv 2208.12242); results.csv, summary.csv and pareto.png in --out. "
                    "Resumes where it stopped; shard it with torchrun.")
    p.add_argument("--dataset", required=True, help="your copy of DreamBench in its original layout: a folder per subject "
                   "with its photos, next to prompts_and_classes.txt")
    p.add_argument("--out", required=True, help="output folder (rerun with the same one to resume)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="base SD1.x / SD2.x / SDXL checkpoint (.safetensors / .ckpt), loaded by ComfyUI")
    model.add_argument("--tiny-random-models", action="store_true", help="smoke test: tiny SD1.x-shaped UNet and CLIP and "
                       "the metric encoders' architectures, all with random weights; no downloads, meaningless scores")
    p.add_argument("--personalisation", help="JSON mapping subjects to a LoRA, DreamBooth checkpoint or Textual-Inversion "
                   "embedding and its identifier (see personalisation.py); other subjects use the class noun")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is present")
    p.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, or the ComfyUI this pack is installed in)")
    p.add_argument("--subjects", help="comma-separated subject names (default: all 30)")
    p.add_argument("--prompts", help="comma-separated prompt indices, 0-24, into each subject's list (default: all 25)")
    p.add_argument("--seeds", type=int, default=DREAMBOOTH_SEEDS,
                   help=f"images per subject, prompt and strength; seeds 0..N-1 (default {DREAMBOOTH_SEEDS}, as DreamBooth)")
    p.add_argument("--strengths", help="comma-separated guidance strengths; 0, the unguided baseline, is always added. "
                   "Required with --checkpoint: the scale that suits real checkpoints is not calibrated yet, which is "
                   f"what this sweep is for (default with --tiny-random-models: {TINY_DEFAULTS['strengths']})")
    p.add_argument("--size", type=int, help=f"image side in pixels (default {REAL_DEFAULTS['size']}; tiny: {TINY_DEFAULTS['size']})")
    p.add_argument("--steps", type=int, help=f"sampling steps (default {REAL_DEFAULTS['steps']}; tiny: {TINY_DEFAULTS['steps']})")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", default="normal")
    p.add_argument("--negative", default="", help="negative prompt (default: empty)")
    p.add_argument("--reference-prompt", default="a photo of a {subject}",
                   help="prompt of the reference photo for the palette; {subject} is 'sks dog' or the class noun")
    p.add_argument("--tau", type=float, default=0.5, help="saliency threshold of the palette's subject mask")
    p.add_argument("--appearance-weight", type=float, default=1.0)
    p.add_argument("--layout-weight", type=float, default=1.0)
    p.add_argument("--appearance-end", type=float, default=0.8, help="fraction of the steps with the appearance term")
    p.add_argument("--layout-end", type=float, default=0.5, help="fraction of the steps with the layout term")
    p.add_argument("--live-classes", default=",".join(dataset.LIVE_CLASSES),
                   help="classes that get the live-subject prompts (default: cat,dog, as DreamBench)")
    p.add_argument("--dino", default=DINO_REPO, help=f"DINO weights: a folder, or a hub id in the local cache (default {DINO_REPO})")
    p.add_argument("--clip", default=CLIP_REPO, help=f"CLIP weights: a folder, or a hub id in the local cache (default {CLIP_REPO})")
    p.add_argument("--barrier-timeout-hours", type=float, default=72.0,
                   help="how long finished ranks wait for the others before rank 0 merges (default 72)")
    p.add_argument("--merge-only", action="store_true", help="only merge the ranks' CSVs in --out, summarise and plot "
                   "(e.g. after copying parts/ and images/ from several machines into one folder)")
    return p


def _resolve(args) -> None:
    """Defaults that depend on the mode, and the checks argparse cannot make."""
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    defaults = TINY_DEFAULTS if args.tiny_random_models else REAL_DEFAULTS
    args.size = args.size or defaults["size"]
    args.steps = args.steps or defaults["steps"]
    if args.strengths is None:
        if not args.tiny_random_models:
            raise ValueError("--strengths is required with --checkpoint (e.g. --strengths 0,0.5,1,2): the strength scale "
                             "of real checkpoints is not calibrated yet; the sweep is how you find it")
        args.strengths = TINY_DEFAULTS["strengths"]
    strengths = _numbers(args.strengths, float, "--strengths")
    if any(v < 0 for v in strengths):
        raise ValueError(f"--strengths {args.strengths}: strengths are >= 0")
    if 0.0 not in strengths:
        print("dreambench: strength 0 (the unguided baseline) added to --strengths")
    args.strength_list = sorted(set(strengths) | {0.0})
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: give at least 1")
    args.live_class_list = _numbers(args.live_classes, str, "--live-classes")


def build_jobs(bench: dataset.DreamBench, prompt_indices: list[int] | None, seeds: int,
               strengths: list[float]) -> list[results.Job]:
    """Every image of the run, ordered subject, prompt, seed, strength (a group's strengths together)."""
    jobs = []
    for subject in bench.subjects:
        count = len(bench.prompts_for(subject))
        indices = range(count) if prompt_indices is None else prompt_indices
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise ValueError(f"--prompts: {bad} outside 0..{count - 1} ({subject.name} has {count} prompts)")
        jobs += [results.Job(subject.name, i, seed, v) for i in indices for seed in range(seeds) for v in strengths]
    return jobs


def groups_of(jobs: list[results.Job]) -> list[list[results.Job]]:
    groups: dict[tuple, list[results.Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    return list(groups.values())


def _row(job: results.Job, subject: dataset.Subject, prompt: str, clip_t_prompt: str, scores: dict) -> dict:
    return {"subject": job.subject, "class": subject.class_noun, "prompt_index": job.prompt_index, "prompt": prompt,
            "clip_t_prompt": clip_t_prompt, "seed": job.seed, "strength": repr(job.strength), "image": job.image_path(),
            **{k: f"{v:.6f}" for k, v in scores.items()}}


def finish(out: Path, jobs: list[results.Job], title: str) -> list[dict]:
    """Rank 0's last step: results.csv, summary.csv and pareto.png from the finished rows of the jobs."""
    rows = results.merge(out, jobs)
    if not rows:
        print(f"dreambench: no finished image in {out} for the requested jobs: nothing to summarise")
        return []
    table = summary.summarise(rows)
    summary.write_summary(table, out / "summary.csv")
    from .plot import plot_pareto

    plot_pareto(table, out / "pareto.png", title)
    missing = len(jobs) - len(rows)
    print(f"dreambench: {len(rows)} of {len(jobs)} images scored" + (f" ({missing} not finished)" if missing else ""))
    print(summary.format_table(table))
    print(f"dreambench: wrote {out / results.RESULTS_FILE}, {out / 'summary.csv'}, {out / 'pareto.png'}")
    return rows


def run(argv: list[str] | None = None) -> dict:
    """Runs this process's share; returns {'rank', 'world_size', 'jobs', 'finished_before', 'generated', 'rows'}."""
    args = parser().parse_args(argv)
    _resolve(args)
    shard = sharding.shard_from_environment()
    bench = dataset.read_dreambench(args.dataset, tuple(args.live_class_list),
                                    _numbers(args.subjects, str, "--subjects") if args.subjects else None)
    prompt_indices = _numbers(args.prompts, int, "--prompts") if args.prompts else None
    jobs = build_jobs(bench, prompt_indices, args.seeds, args.strength_list)
    out = Path(args.out)
    model_name = "tiny random models" if args.tiny_random_models else Path(args.checkpoint).name
    title = f"Pick-and-Draw on DreamBench: {model_name}, {len(bench.subjects)} subjects, {args.steps} steps, cfg {args.cfg:g}"
    report = {"rank": shard.rank, "world_size": shard.world_size, "jobs": 0, "finished_before": 0, "generated": 0, "rows": []}
    if args.merge_only:
        if shard.rank == 0:
            report["rows"] = finish(out, jobs, title)
        return report

    from .personalisation import read_personalisation

    personalisations = read_personalisation(args.personalisation, [s.name for s in bench.subjects])
    group = sharding.ProcessGroup(shard, timedelta(hours=args.barrier_timeout_hours))
    try:
        report.update(_generate_share(args, shard, bench, jobs, personalisations, out))
        group.barrier()
        if shard.rank == 0:
            report["rows"] = finish(out, jobs, title)
    finally:
        group.close()
    return report


def _generate_share(args, shard, bench, jobs, personalisations, out: Path) -> dict:
    """Generates and scores the unfinished jobs of this rank's slice."""
    from PIL import Image
    from tqdm import tqdm

    from . import encoders as encoders_module
    from .generation import PickAndDrawGenerator, SamplingSettings
    from .metrics import DreamBenchScorer
    from .models import ModelSource, import_comfyui

    device = shard.device(args.cpu)
    host = import_comfyui(args.comfyui, device)
    if args.tiny_random_models:
        encoders = encoders_module.random_encoders(device, str(encoders_module.comfyui_clip_tokenizer_folder()))
    else:
        encoders = encoders_module.load_encoders(args.dino, args.clip, device)
    settings = SamplingSettings(args.size, args.steps, args.cfg, args.sampler, args.scheduler, args.negative,
                                args.reference_prompt, args.tau, args.appearance_weight, args.layout_weight,
                                args.appearance_end, args.layout_end)
    recorded = {"model": "tiny-random-models" if args.tiny_random_models else str(Path(args.checkpoint).resolve()),
                "personalisation": {name: p.describe() for name, p in sorted(personalisations.items())},
                "sampling": settings.as_dict(), "live_classes": sorted(args.live_class_list),
                "encoders": encoders.description}
    results.check_settings(out, recorded, write=shard.rank == 0)

    mine = [job for group in sharding.slice_of(groups_of(jobs), shard) for job in group]
    finished = results.finished_rows(out)
    pending = [job for job in mine if job not in finished]
    print(f"dreambench: rank {shard.rank} of {shard.world_size} on {device}: {len(mine)} images in its slice, "
          f"{len(mine) - len(pending)} already finished, {len(pending)} to generate")
    generator = PickAndDrawGenerator(host, ModelSource(args.checkpoint, personalisations), settings)
    scorer = DreamBenchScorer(encoders)
    log = results.RankLog(out, shard.rank)
    try:
        for job in tqdm(pending, desc=f"rank {shard.rank}", unit="image", position=shard.local_rank, dynamic_ncols=True):
            subject = bench.subject(job.subject)
            template = bench.prompts_for(subject)[job.prompt_index]
            pixels = generator.image(subject, template, job)
            results.write_image_atomically(pixels, out / job.image_path())
            identifier = generator.models.for_subject(subject.name).identifier
            prompt, clip_t_prompt = (dataset.format_prompt(template, name, subject.class_noun) for name in (identifier, ""))
            log.append(_row(job, subject, prompt, clip_t_prompt, scorer.score(Image.fromarray(pixels), subject, clip_t_prompt)))
    finally:
        log.close()
    return {"jobs": len(mine), "finished_before": len(mine) - len(pending), "generated": len(pending)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--cpu" in argv:  # the command's own process: hide the GPUs before anything asks CUDA, so ComfyUI takes the CPU too
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        run(argv)
    except (ValueError, FileNotFoundError, EncoderMissing) as exc:
        print(f"dreambench: error: {exc}", file=sys.stderr)
        return 2
    return 0
