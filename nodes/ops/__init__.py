"""Python face of the native guidance library. Imports torch only, never ComfyUI.

Every function here is a thin, documented entry to the native module; the plain PyTorch
versions used as the test oracle are in :mod:`.reference`. Shapes use B for independent problems
(batch), N for generated features, M for palette features, C for channels, H x W for maps.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _native

_C = _native.load()

Palette = _C.Palette
LayoutTemplate = _C.LayoutTemplate
GuidanceMetadata = _C.GuidanceMetadata
SubjectTokens = _C.SubjectTokens
SigmaMatch = _C.SigmaMatch
AttentionRecorder = _C.AttentionRecorder
LayerCapture = _C.LayerCapture
GuidanceConfig = _C.GuidanceConfig
GuidanceEngine = _C.GuidanceEngine
StepLoss = _C.StepLoss
UNetLayout = _C.UNetLayout
ModelLayerTable = _C.ModelLayerTable
supported_families = _C.supported_families
build_info = _C.build_info


def uremd(generated: torch.Tensor, palette: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Unidirectional relaxed EMD: for each problem b,
    ``sum_n w[b,n] * min_m (1 - cos(generated[b,n], palette[b,m])) / sum_n w[b,n]``.

    generated: [B, N, C] float16/bfloat16/float32/float64. palette: [B, M, C] or [1, M, C] (shared),
    same dtype and device. weight: optional [B, N] non-negative weights or 0/1 mask.
    Returns [B] in the input dtype (reduced precision accumulates in float32). A problem with no
    weight has loss 0. Ties between palette entries go to the lowest index. Differentiable in all
    inputs; no N x M matrix is ever stored. Same as ``torch.ops.pickdraw.uremd``.
    """
    return torch.ops.pickdraw.uremd(generated, palette, weight)


def uremd_with_argmin(generated: torch.Tensor, palette: torch.Tensor, weight: torch.Tensor | None = None):
    """Forward only: (loss [B], min_cost [B, N] float32/float64, argmin [B, N] int64)."""
    return _C.uremd_with_argmin(generated, palette, weight)


def saliency_mask(token_map: torch.Tensor, tau: float = 0.5, min_mask_pixels: int = 4, out_size: Sequence[int] | None = None) -> torch.Tensor:
    """Binary subject mask [B, h, w] (0/1 in the map's dtype, no gradient) from a [B, H, W] token map.

    The map is resampled to ``out_size = (h, w)`` (antialiased bilinear), min-max normalised per
    sample and thresholded (``> tau``); when fewer than ``min_mask_pixels`` pass, the ``min_mask_pixels``
    largest values are taken instead (equal values: lower flat index first).
    """
    return _C.saliency_mask(token_map, tau, min_mask_pixels, None if out_size is None else tuple(out_size))


def average_token_maps(maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Mean of [B, h_i, w_i] maps resampled to ``size = (H, W)``: [B, H, W]. Differentiable."""
    return _C.average_token_maps(list(maps), tuple(size))


def resample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[B, H, W] -> [B, h, w], antialiased bilinear (align_corners=False). Differentiable."""
    return _C.resample_maps(maps, tuple(size))


def gaussian_kernel_1d(kernel_size: int, std_dev: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, float64 [kernel_size]; kernel_size odd, std_dev > 0."""
    return _C.gaussian_kernel_1d(kernel_size, std_dev)


def gaussian_smooth(maps: torch.Tensor, kernel_size: int = 3, std_dev: float = 0.5) -> torch.Tensor:
    """Separable Gaussian blur of [..., H, W] maps, reflect padding. Differentiable; same shape."""
    return _C.gaussian_smooth(maps, kernel_size, std_dev)


def layout_loss(
    maps: Sequence[torch.Tensor],
    templates: Sequence[torch.Tensor],
    kernel_size: int = 3,
    std_dev: float = 0.5,
    templates_smoothed: bool = False,
) -> torch.Tensor:
    """[B]: mean over layers of ``||S(maps[l]) - S(templates[l])||_F`` (S: Gaussian smoothing).

    maps: list of [B, H_l, W_l]; templates: list of [B or 1, H_l, W_l], taken as already smoothed
    when ``templates_smoothed``. Differentiable in maps.
    """
    return _C.layout_loss(list(maps), list(templates), kernel_size, std_dev, templates_smoothed)


def token_attention_maps(q: torch.Tensor, k: torch.Tensor, heads: int, token_index: torch.Tensor,
                         recompute_in_backward: bool = False) -> torch.Tensor:
    """[B, N, K]: the head-averaged softmax attention of q [B, N, heads*dim] on k [B, T, heads*dim], columns
    ``token_index`` (int64 [K]); float32 for reduced-precision inputs. Differentiable in q and k; with
    ``recompute_in_backward`` the backward recomputes the probabilities instead of keeping them."""
    return _C.token_attention_maps(q, k, heads, token_index, recompute_in_backward)


def nearest_sigma(recorded: Sequence[float], requested: float, sigma_tolerance: float = 0.05) -> SigmaMatch:
    """Nearest recorded sigma in log space; ValueError outside ``[min/(1+tol), max*(1+tol)]``."""
    return _C.nearest_sigma(list(recorded), requested, sigma_tolerance)


__all__ = [
    "ModelLayerTable",
    "UNetLayout",
    "supported_families",
    "GuidanceConfig",
    "GuidanceEngine",
    "StepLoss",
    "AttentionRecorder",
    "LayerCapture",
    "GuidanceMetadata",
    "LayoutTemplate",
    "Palette",
    "SigmaMatch",
    "SubjectTokens",
    "average_token_maps",
    "build_info",
    "gaussian_kernel_1d",
    "gaussian_smooth",
    "layout_loss",
    "nearest_sigma",
    "resample_maps",
    "saliency_mask",
    "token_attention_maps",
    "uremd",
    "uremd_with_argmin",
]
