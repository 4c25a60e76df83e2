"""The two guided samplers as ComfyUI runs them: KSampler's (seed, steps, cfg, sampler, scheduler, denoise) and a
CFGGuider for SamplerCustomAdvanced, each checking its stores and settings before it samples."""

from __future__ import annotations

import logging

import comfy.samplers
import torch

from .engine import _guidance_engine, check_guidance_settings
from .guided_step import guide_model
from .palette import warn_palette_schedule
from .settings import GuidanceSettings, SamplingSettings
from .template import check_template_matches

logger = logging.getLogger("pickdraw")


def guided_sample(model_patcher, sampling: SamplingSettings, positive, negative, latent, palette, layout_template,
                  guidance: GuidanceSettings, batched: bool | None = None):
    """ComfyUI's KSampler (same noise, schedule, preview and progress) with Pick-and-Draw guidance.

    A term whose store is not connected is off. batched: see guide_model. Returns (latent dict, run log).
    """
    import nodes as comfy_nodes  # ComfyUI's nodes.py: common_ksampler is its KSampler

    check_guidance_settings(guidance.strength, guidance.weights())
    if not bool(torch.isfinite(latent["samples"]).all()):
        raise ValueError("the latent image holds values that are not finite (NaN or infinity): check the node that made it")
    if layout_template is not None:
        check_template_matches(layout_template, sampling.facts(latent["samples"]))
    if palette is not None:
        warn_palette_schedule(palette, sampling.steps, sampling.scheduler)
    engine = _guidance_engine(model_patcher, positive, palette, layout_template, guidance.weights())
    guided, run = guide_model(model_patcher, engine, palette, layout_template, guidance.strength, batched)
    (out,) = comfy_nodes.common_ksampler(guided, sampling.seed, sampling.steps, sampling.cfg, sampling.sampler_name,
                                         sampling.scheduler, positive, negative, latent, denoise=sampling.denoise)
    log = run.log
    report_unguided_steps(log)
    return out, log


def report_unguided_steps(log: list[dict]) -> None:
    """Says which guided steps were not applied: where the subject's prompt did not run (a timestep range on its
    conditioning), and where the gradient was not finite (float16 overflow, a NaN in the model): those samples
    took the plain step there."""
    absent = [entry["step"] for entry in log if entry.get("subject_absent")]
    if absent:
        logger.info("Pick-and-Draw: the subject's prompt did not run at step(s) %s (a timestep range on its "
                    "conditioning); the guidance was off there", ", ".join(map(str, absent)))
    skipped = [entry["step"] for entry in log if entry.get("not_finite")]
    if skipped:
        logger.warning("Pick-and-Draw: the guidance gradient was not finite at step(s) %s; those steps were sampled "
                       "without guidance (a float16 overflow or a NaN in the model: try float32 or a lower strength)",
                       ", ".join(map(str, skipped)))


def guided_cfg_guider(model_patcher, positive, negative, cfg, palette, layout_template, guidance: GuidanceSettings):
    """A CFGGuider for SamplerCustomAdvanced that samples with the guidance. The noise and sigmas come from the
    other nodes of that graph, so the template's seed and schedule cannot be checked before sampling: the first
    step compares its latent with the template's noise fingerprint, and the sigma lookup refuses a schedule outside
    the recorded range."""
    check_guidance_settings(guidance.strength, guidance.weights())
    engine = _guidance_engine(model_patcher, positive, palette, layout_template, guidance.weights())
    expected = layout_template.metadata.extra.get("noise") if layout_template is not None else None
    guided, run = guide_model(model_patcher, engine, palette, layout_template, guidance.strength, expected_noise=expected)
    guider = comfy.samplers.CFGGuider(guided)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider, run
