"""Pick Palette: the subject's features from one reference image, at every noise level of the schedule."""

from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from . import comfy_host
from .previews import map_preview
from .types import Palette


class PickPalette(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_PickPalette",
            display_name="Pick Palette (Pick-and-Draw)",
            category="pick_and_draw",
            description="Inverts the reference image with the model and keeps the subject's features at every noise "
                        "level: the appearance the guided run picks from.",
            inputs=[
                io.Model.Input("model", tooltip="The model you will sample with (vanilla, LoRA or DreamBooth)."),
                io.Vae.Input("vae", tooltip="The VAE that encodes the reference image (the checkpoint's)."),
                io.Image.Input("image", tooltip="One reference image of the subject; sides multiples of 8."),
                io.Conditioning.Input("positive", tooltip="From 'Subject Prompt (Pick-and-Draw)', describing the reference."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Use the guided run's steps."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="Use the guided run's scheduler: the palette is picked at its sigmas."),
                io.Float.Input("tau", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Saliency threshold on the min-max normalised subject map."),
                io.Mask.Input("mask", optional=True, tooltip="Marks the subject instead of the saliency mask."),
            ],
            outputs=[
                Palette.Output(display_name="palette"),
                io.Image.Output(display_name="mask_preview"),
                io.Image.Output(display_name="token_map"),
            ],
        )

    @classmethod
    def execute(cls, model, vae, image, positive, steps, scheduler, tau, mask=None) -> io.NodeOutput:
        palette, token_map, subject_mask = comfy_host.pick_palette(model, vae, image, positive, steps, scheduler, mask, tau)
        height, width = image.shape[1], image.shape[2]
        mask_image = map_preview(subject_mask.float().unsqueeze(0), height, width)
        overlay = image[..., :3].cpu() * (0.3 + 0.7 * mask_image)
        return io.NodeOutput(palette, overlay.clamp(0, 1), map_preview(token_map.unsqueeze(0), height, width))


NODES = [PickPalette]
