"""Plain PyTorch versions of every native op: the test oracle, deliberately simple.

These materialise everything (the full N x M cost matrix included) and are written for
readability, not speed. The native ops must agree with them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-8


def uremd(generated: torch.Tensor, palette: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N, C], [B or 1, M, C], [B, N] or None -> [B]; see include/pickdraw/uremd.h."""
    acc = torch.float64 if generated.dtype == torch.float64 else torch.float32
    g = F.normalize(generated.to(acc), dim=-1, eps=COSINE_EPS)
    p = F.normalize(palette.to(acc), dim=-1, eps=COSINE_EPS)
    cost = 1 - g @ p.transpose(1, 2)  # [B, N, M]
    min_cost = cost.min(dim=-1).values if cost.shape[-1] > 0 else cost.sum(-1)
    w = torch.ones_like(min_cost) if weight is None else weight.to(acc)
    w_sum = w.sum(1)
    loss = torch.where(w_sum > 0, (w * min_cost).sum(1) / torch.where(w_sum > 0, w_sum, 1), 0)
    return loss.to(generated.dtype)


def uremd_min_cost(generated: torch.Tensor, palette: torch.Tensor):
    """(min_cost [B, N], argmin [B, N]) with the lowest-index tie rule."""
    acc = torch.float64 if generated.dtype == torch.float64 else torch.float32
    g = F.normalize(generated.to(acc), dim=-1, eps=COSINE_EPS)
    p = F.normalize(palette.to(acc), dim=-1, eps=COSINE_EPS)
    cost = 1 - g @ p.transpose(1, 2)
    min_cost = cost.min(dim=-1).values
    # the first index attaining the minimum
    first = (cost == min_cost.unsqueeze(-1)).to(torch.int64).argmax(dim=-1)
    return min_cost, first


def resample_maps(maps: torch.Tensor, size) -> torch.Tensor:
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False, antialias=True).squeeze(1)


def average_token_maps(maps, size) -> torch.Tensor:
    return sum(resample_maps(m, size) for m in maps) / len(maps)


def saliency_mask(token_map: torch.Tensor, tau: float, min_mask_pixels: int = 4, out_size=None) -> torch.Tensor:
    size = tuple(out_size) if out_size is not None else tuple(token_map.shape[1:])
    with torch.no_grad():
        a = resample_maps(token_map.detach(), size).flatten(1)
        masks = []
        for row in a:
            lo, hi = row.min(), row.max()
            m = (row - lo) / (hi - lo + 1e-8) > tau
            k = min(min_mask_pixels, row.numel())
            if k > 0 and int(m.sum()) < k:
                # largest values first, lower index first among equal values
                order = sorted(range(row.numel()), key=lambda i: (-float(row[i]), i))[:k]
                m = torch.zeros_like(m)
                m[order] = True
            masks.append(m)
        return torch.stack(masks).to(token_map.dtype).view(-1, *size)


def gaussian_kernel_1d(kernel_size: int, std_dev: float) -> torch.Tensor:
    half = kernel_size // 2
    taps = torch.tensor([math.exp(-0.5 * (i - half) ** 2 / std_dev**2) for i in range(kernel_size)], dtype=torch.float64)
    return taps / taps.sum()


def gaussian_smooth(maps: torch.Tensor, kernel_size: int, std_dev: float) -> torch.Tensor:
    """Full 2-D convolution with the outer-product kernel (the native op is separable)."""
    half = kernel_size // 2
    if half == 0:
        return maps.clone()
    k1 = gaussian_kernel_1d(kernel_size, std_dev).to(maps)
    k2 = torch.outer(k1, k1)
    h, w = maps.shape[-2:]
    x = maps.reshape(-1, 1, h, w)
    x = F.pad(x, (half, half, half, half), mode="reflect")
    return F.conv2d(x, k2.view(1, 1, kernel_size, kernel_size)).reshape(maps.shape)


def layout_loss(maps, templates, kernel_size: int = 3, std_dev: float = 0.5, templates_smoothed: bool = False) -> torch.Tensor:
    terms = []
    for a, t in zip(maps, templates, strict=True):
        st = t if templates_smoothed else gaussian_smooth(t, kernel_size, std_dev)
        sa = gaussian_smooth(a, kernel_size, std_dev)
        relative = lambda m: m / m.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # noqa: E731
        terms.append(torch.linalg.vector_norm(relative(sa) - relative(st), dim=(1, 2)) / math.sqrt(a.shape[1] * a.shape[2]))
    return sum(terms) / len(terms)


def token_attention_maps(q: torch.Tensor, k: torch.Tensor, heads: int, token_index: torch.Tensor) -> torch.Tensor:
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2).to(compute)  # noqa: E731
    qh, kh = split(q), split(k)
    probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
    return probs[..., token_index].mean(1)


def nearest_sigma(recorded, requested: float, sigma_tolerance: float = 0.05) -> int:
    lo, hi = min(recorded), max(recorded)
    if not (lo / (1 + sigma_tolerance) <= requested <= hi * (1 + sigma_tolerance)):
        raise ValueError("outside the recorded range")
    dists = [abs(math.log(s) - math.log(requested)) for s in recorded]
    return dists.index(min(dists))
