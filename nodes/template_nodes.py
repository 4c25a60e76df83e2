"""Draw Layout Template: the vanilla model's own layout for the prompt, recorded at every step."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import comfy_host
from .types import LayoutTemplate, ksampler_inputs


def map_preview(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, h, w] maps -> an IMAGE [B, height, width, 3], each map scaled to 0..1."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = ((flat - lo) / (hi - lo + 1e-8)).view_as(maps)
    image = torch.nn.functional.interpolate(scaled.unsqueeze(1).float(), size=(height, width), mode="bilinear")
    return image.squeeze(1).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().cpu()


class DrawLayoutTemplate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_DrawLayoutTemplate",
            display_name="Draw Layout Template (Pick-and-Draw)",
            category="pick_and_draw",
            description="Samples with the vanilla model (prompt with the class noun) and records where the subject is "
                        "at every step: the layout the guided run is drawn towards.",
            # The vanilla base model (not the personalised one) and the prompt with the class noun as subject.
            inputs=ksampler_inputs("Use the guided run's seed: the template is tied to it."),
            outputs=[
                LayoutTemplate.Output(display_name="layout_template"),
                io.Latent.Output(display_name="template_latent"),
                io.Image.Output(display_name="subject_map"),
            ],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise) -> io.NodeOutput:
        template, out, preview = comfy_host.draw_layout_template(model, seed, steps, cfg, sampler_name, scheduler,
                                                                 positive, negative, latent_image, denoise)
        height, width = latent_image["samples"].shape[-2] * 8, latent_image["samples"].shape[-1] * 8
        return io.NodeOutput(template, out, map_preview(preview, height, width))


NODES = [DrawLayoutTemplate]
