"""Reference image -> palette: the reference is inverted along the model's own schedule and the subject's
appearance features are kept at every sigma."""

from __future__ import annotations

import logging

import comfy.samplers
import comfy.utils
import torch

from .. import ops
from .family import layer_table
from .recording import (_recording_setup, _report_absent_subject, _store_from_pass, _store_metadata,
                        capture_each_step, token_map_preview)

logger = logging.getLogger("pickdraw")


# What the appearance layers record as features (see AttentionRecorder.feature_source): image features, the
# query projection of the hidden states each cross-attention layer reads.
PALETTE_FEATURE_SOURCE = "attn2_query"


@torch.no_grad()
def _invert(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Deterministic inversion along ascending sigmas: Euler in sigma space with the model's own prediction,
    which with cfg 1 is DDIM inversion. The model is evaluated on the latent *at* each level, so what a capture
    pass records at sigma_i comes from the inverted latent at sigma_i; that evaluation's noise estimate then
    carries the latent to the next level. The first level needs one extra evaluation (on the clean latent, at
    the first sigma) to get there: a capture pass ignores its first call."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    noise = (x - model(x, sigmas[0] * s_in, **extra_args)) / sigmas[0]
    previous = 0.0
    for i, sigma in enumerate(sigmas):
        x = x + (sigma - previous) * noise
        denoised = model(x, sigma * s_in, **extra_args)
        noise = (x - denoised) / sigma
        previous = sigma
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return x


def pick_palette(model_patcher, vae, image, positive, steps, scheduler, mask=None, tau=0.5, min_mask_pixels=4):
    """Inverts the reference image along the model's own sigma schedule (one pass, cfg 1) and keeps, at every
    sigma, the appearance layers' features inside the subject (the saliency mask of the subject's maps, or
    the given MASK). Returns (Palette, token map [H, W] at the lowest sigma, mask [H, W] at the finest
    appearance layer), the last two for previews."""
    import comfy.sample

    if image.shape[1] % 8 or image.shape[2] % 8:
        raise ValueError(f"the reference image is {image.shape[2]}x{image.shape[1]}: both sides must be multiples of 8 "
                         "(resize or crop it)")
    if image.shape[0] != 1:
        raise ValueError(f"give one reference image, got a batch of {image.shape[0]}")
    latent = vae.encode(image[..., :3])
    appearance_layers = layer_table(model_patcher).default_appearance_layers(latent.shape[-2], latent.shape[-1])
    family, subject, config, engine = _recording_setup(
        model_patcher, positive, appearance_layers=appearance_layers, mask_layers=appearance_layers,
        tau=tau, min_mask_pixels=min_mask_pixels)
    schedule = comfy.samplers.calculate_sigmas(model_patcher.get_model_object("model_sampling"), scheduler, steps)
    ascending = schedule[schedule > 0].flip(0)
    extra = {"steps": str(int(steps)), "scheduler": scheduler, "mask": "user" if mask is not None else "saliency",
             "mask_layers": ",".join(config.mask_layers), "min_mask_pixels": str(int(min_mask_pixels))}
    metadata = _store_metadata(family, config.appearance_layers, subject, ascending.tolist(), PALETTE_FEATURE_SOURCE,
                               image.shape[1], image.shape[2], extra, tau)
    provisional = ops.Palette(metadata)  # entry i at ascending[i]; steps where the subject did not run stay empty
    calls, recorded, absent, previews = [], [], [], []

    def on_step(step, steps_total, sigma, recorder):
        calls.append(sigma)
        if len(calls) == 1:  # _invert's first call, on the clean latent, only finds the way to the first level
            return
        index = len(calls) - 2
        if not recorder.maps():
            absent.append(index)
            return
        engine.record_palette_entry(recorder, provisional, index, 0, mask)
        recorded.append(index)
        if not previews:  # the lowest sigma's token map, and the kept tokens of the finest appearance layer
            finest = max(config.appearance_layers, key=lambda key: recorder.maps()[key].shape[-2:].numel())
            h, w = recorder.maps()[finest].shape[-2:]
            previews.append(token_map_preview(list(recorder.maps().values()))[0])
            previews.append(engine.palette_mask(recorder, h, w, 0, mask).view(h, w))

    import latent_preview  # ComfyUI's: progress bar, previews and (through its hook) Cancel

    capturing = capture_each_step(model_patcher, engine, on_step)
    sampler = comfy.samplers.KSAMPLER(_invert)
    preview_and_progress = latent_preview.prepare_callback(capturing, len(ascending))

    def callback(step, x0, x, total_steps):
        # KSAMPLER counts len(sigmas) - 1 steps, as a schedule ends at 0; the inversion's ascending sigmas do not
        preview_and_progress(step, x0, x, len(ascending))
    comfy.sample.sample_custom(capturing, torch.zeros_like(latent), 1.0, sampler, ascending, positive, positive, latent,
                               callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    _report_absent_subject("palette", absent, len(absent) + len(recorded))
    metadata.sigmas = [float(ascending[index]) for index in recorded]
    return _store_from_pass(ops.Palette, provisional, recorded, metadata), previews[0], previews[1]


def warn_palette_schedule(palette, steps: int, scheduler: str) -> None:
    """A palette picked along another schedule (steps, scheduler) still works, each step taking the entry at the
    nearest recorded sigma, but its features then come from other noise levels than the run's: said, with both."""
    picked = palette.metadata.extra
    if picked.get("steps") not in (None, str(int(steps))) or picked.get("scheduler") not in (None, scheduler):
        logger.warning("Pick-and-Draw: the palette was picked along %s steps of the '%s' schedule and this run samples "
                       "%d steps of '%s': each step uses the palette entry at the nearest sigma (pick the palette with "
                       "the run's steps and scheduler for entries at its exact sigmas)", picked.get("steps"),
                       picked.get("scheduler"), int(steps), scheduler)
