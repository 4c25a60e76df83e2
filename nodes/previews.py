"""Preview images of maps and masks, as the capture nodes return them."""

from __future__ import annotations

import torch


def map_preview(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, h, w] maps -> an IMAGE [B, height, width, 3], each map scaled to 0..1."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = ((flat - lo) / (hi - lo + 1e-8)).view_as(maps)
    image = torch.nn.functional.interpolate(scaled.unsqueeze(1).float(), size=(height, width), mode="bilinear")
    return image.squeeze(1).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().cpu()
