"""The model family and its cross-attention layers: which UNets the method is defined on, and where their
cross-attention layers sit, read from the model's own configuration."""

from __future__ import annotations

import comfy.supported_models as supported_models

from .. import ops


# Config classes whose UNet cross-attention the method is defined on, most specific first.
_FAMILIES = (
    (supported_models.SDXL, "sdxl"),
    (supported_models.SD20, "sd2"),
    (supported_models.SD15, "sd1"),
)


def model_family(model_patcher) -> str:
    """'sd1', 'sd2' or 'sdxl' for a ComfyUI MODEL; ValueError naming the model otherwise."""
    config = model_patcher.model.model_config
    for cls, family in _FAMILIES:
        if isinstance(config, cls):
            return family
    raise ValueError(
        f"Pick-and-Draw works on SD1.x, SD2.x and SDXL UNets; this MODEL is {type(config).__name__}, "
        "whose architecture has no UNet cross-attention to guide"
    )


def unet_layout(model_patcher) -> ops.UNetLayout:
    """The UNet's cross-attention placement, read from the model's own unet_config."""
    family = model_family(model_patcher)
    config = model_patcher.model.model_config.unet_config
    try:
        res_blocks = config["num_res_blocks"]
        res_blocks = list(res_blocks) if isinstance(res_blocks, (list, tuple)) else [res_blocks] * len(config["channel_mult"])
        if len(set(res_blocks)) != 1:
            raise ValueError(f"per-level num_res_blocks {res_blocks} differ")
        middle = config.get("transformer_depth_middle")
        if middle is None:  # ComfyUI's UNetModel default: the deepest level's depth
            middle = config["transformer_depth"][-1]
        layout = ops.UNetLayout()
        layout.family = family
        layout.model_channels = int(config["model_channels"])
        layout.channel_mult = [int(c) for c in config["channel_mult"]]
        layout.num_res_blocks = int(res_blocks[0])
        layout.transformer_depth = [int(d) for d in config["transformer_depth"]]
        layout.transformer_depth_middle = max(int(middle), 0)  # -1: no transformer, -2: no middle block
        layout.transformer_depth_output = [int(d) for d in config["transformer_depth_output"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read the UNet layout of this MODEL from its unet_config ({exc!r})") from exc
    return layout


def layer_table(model_patcher) -> ops.ModelLayerTable:
    return ops.ModelLayerTable(unet_layout(model_patcher))
