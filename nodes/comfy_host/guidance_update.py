"""Gradient -> update: the energy's gradient to the latent turned into a unit direction, and the distance the
denoised estimate moves along it for a given strength."""

from __future__ import annotations

import torch


# Loss scaling before the backward: each term is divided by its own value and multiplied by this, so the backward
# carries numbers of this size whatever the model's energy scale (float16 gradients of a raw UREMD underflow);
# the normalisation after the backward removes the scale.
_LOSS_SCALE = 1024.0


# Per-sample elementwise clip of a term's gradient, in units of its RMS, before normalising: a few latent pixels
# with outsized gradients would otherwise take the whole displacement.
_GRADIENT_CLIP_RMS = 4.0


def unit_direction(gradient: torch.Tensor) -> torch.Tensor:
    """The gradient clipped elementwise at _GRADIENT_CLIP_RMS times its RMS and scaled to unit RMS, per sample
    (a sample whose gradient is zero stays zero)."""
    flat = gradient.float().flatten(1)
    rms = flat.pow(2).mean(1, keepdim=True).sqrt()
    bound = _GRADIENT_CLIP_RMS * rms
    clipped = torch.maximum(torch.minimum(flat, bound), -bound)
    clipped_rms = clipped.pow(2).mean(1, keepdim=True).sqrt()
    return torch.where(clipped_rms > 0, clipped / clipped_rms.clamp_min(1e-30), torch.zeros_like(clipped)).view_as(gradient)


def guidance_direction(terms, x_in: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The guidance direction (unit RMS per sample, float32): the weighted mean of each term's unit direction, scaled
    back to unit RMS, so a weight is that term's share whatever the terms' energy scales. terms: (name, weight, per-sample energy [B]).
    Returns (direction, {name: RMS of that term's raw gradient, summed over samples}) for the step log."""
    active = [(name, weight, energy) for name, weight, energy in terms if weight > 0 and energy.requires_grad]
    direction = torch.zeros(x_in.shape, dtype=torch.float32, device=x_in.device)
    raw_rms = {}
    weight_sum = sum(weight for _, weight, _ in active)
    for index, (name, weight, energy) in enumerate(active):
        # capped so that the scale itself is representable in the energy's dtype (float16: at most 16,376)
        scale = (_LOSS_SCALE / energy.detach().float().abs().clamp_min(1e-30)).clamp(max=torch.finfo(energy.dtype).max / 4)
        scaled = torch.autograd.grad((energy * scale.to(energy.dtype)).sum(), x_in, retain_graph=index < len(active) - 1)[0]
        raw_rms[name] = (scaled.float().flatten(1).pow(2).mean(1).sqrt() / scale).sum()
        direction += (weight / weight_sum) * unit_direction(scaled)
    # the weighted mean of unit directions is shorter where the terms disagree: back to unit RMS, so that the
    # strength alone sets the step's size
    rms = direction.flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (direction.ndim - 1)))
    return torch.where(rms > 0, direction / rms.clamp_min(1e-30), direction), raw_rms


def guidance_displacement(strength: float, x: torch.Tensor, denoised: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """How far the guidance moves the denoised estimate: strength times the RMS of the sampler's own update at this
    sigma (x - denoised, the noise it removes) along the unit-RMS direction, per sample. Strength 1 moves the
    prediction as far as the step's whole noise estimate, on any model, dtype or schedule."""
    update_rms = (x - denoised).float().flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (x.ndim - 1)))
    return (strength * update_rms * direction.to(update_rms.device)).to(denoised.dtype)
