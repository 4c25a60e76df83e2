"""Vanilla run -> layout template: the model samples as KSampler does while the subject's smoothed cross-attention
maps are recorded at every step, with the facts (seed, schedule, first noise) a guided run must share."""

from __future__ import annotations

import math

import torch

from .. import ops
from .family import layer_table
from .settings import SamplingSettings
from .recording import (_recording_setup, _report_absent_subject, _store_from_pass, _store_metadata,
                        capture_each_step, token_map_preview)


def noise_fingerprint(x: torch.Tensor) -> str:
    """A short text that identifies a run's first latent (its seed's noise at the first sigma, plus the latent it
    starts from): the first sample's mean, RMS and eight of its values, to four significant digits. ComfyUI draws a
    batch's noise from one generator, so a template of one sample fits a guided batch of the same seed."""
    flat = x[:1].detach().float().flatten().cpu()
    picks = flat[torch.linspace(0, flat.numel() - 1, 8).long()]
    return ",".join(f"{float(v):.4g}" for v in (flat.mean(), flat.pow(2).mean().sqrt(), *picks))


def fingerprints_match(a: str, b: str) -> bool:
    """Whether two noise fingerprints name the same first latent, up to their rounding."""
    first, second = [float(v) for v in a.split(",")], [float(v) for v in b.split(",")]
    return len(first) == len(second) and all(math.isclose(u, v, rel_tol=2e-3, abs_tol=1e-3) for u, v in zip(first, second))


def check_template_matches(layout_template, facts: dict) -> None:
    """ValueError naming every fact in which the template's run differs from this one."""
    recorded = layout_template.metadata.extra
    differ = [f"{key} {recorded.get(key)} vs {value}" for key, value in facts.items()
              if key != "cfg" and recorded.get(key) != value]
    if differ:
        raise ValueError("the layout template was drawn with another " + ", ".join(differ) +
                         " (template vs this run): draw it with the same seed, steps, sampler, scheduler, denoise "
                         "and latent size as the guided run")


def draw_layout_template(model_patcher, sampling: SamplingSettings, positive, negative, latent, smoothing_kernel=3,
                         smoothing_std_dev=0.5):
    """Samples with the (vanilla) MODEL as KSampler does and records the subject's smoothed maps of every
    cross-attention layer at every step. Returns (LayoutTemplate, latent dict, subject map [B, H, W] of the
    first step, averaged over layers, for previews)."""
    import nodes as comfy_nodes

    if not float(sampling.denoise) > 0:
        raise ValueError(f"denoise is {sampling.denoise}: a layout template records the steps the sampler runs, and denoise 0 "
                         "runs none (use denoise > 0, as in the guided run the template is for)")
    family, subject, config, engine = _recording_setup(
        model_patcher, positive, layout_layers=layer_table(model_patcher).default_layout_layers(),
        smoothing_kernel=smoothing_kernel, smoothing_std_dev=smoothing_std_dev)
    height, width = latent["samples"].shape[-2] * 8, latent["samples"].shape[-1] * 8
    recorded, sigmas, absent, stores = [], [], [], []

    def on_step(step, steps_total, sigma, recorder):
        if not recorder.maps():
            absent.append(step)
            return
        if not stores:  # one entry per step of the run; the sigmas are the final store's, known after the pass
            stores.append(ops.LayoutTemplate(_store_metadata(family, config.layout_layers, subject, [1.0] * steps_total,
                                                             "attn2_probabilities", height, width, {})))
        engine.record_template_entry(recorder, stores[0], step)
        recorded.append(step)
        sigmas.append(sigma)

    first_input = []
    capturing = capture_each_step(model_patcher, engine, on_step, first_input)
    (out,) = comfy_nodes.common_ksampler(capturing, sampling.seed, sampling.steps, sampling.cfg, sampling.sampler_name,
                                         sampling.scheduler, positive, negative, latent, denoise=sampling.denoise)
    _report_absent_subject("layout template", absent, len(absent) + len(recorded))
    metadata = _store_metadata(family, config.layout_layers, subject, sigmas, "attn2_probabilities", height, width,
                               {**sampling.facts(latent["samples"]),
                                "noise": noise_fingerprint(first_input[0])})
    template = _store_from_pass(ops.LayoutTemplate, stores[0], recorded, metadata)
    preview = token_map_preview([template.get(0, key) for key in config.layout_layers])
    return template, out, preview
