"""Draw Layout Template: the vanilla model's own layout for the prompt, recorded at every step."""

from __future__ import annotations

from comfy_api.latest import io

from . import comfy_host
from .previews import map_preview
from .types import LayoutTemplate, ksampler_inputs


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
            inputs=ksampler_inputs("Use the guided run's seed: the template is tied to it.",
                                   "The vanilla base model (no LoRA or DreamBooth): its own layout for the class-noun "
                                   "prompt is the template."),
            outputs=[
                LayoutTemplate.Output(display_name="layout_template"),
                io.Latent.Output(display_name="template_latent"),
                io.Image.Output(display_name="subject_map"),
            ],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise) -> io.NodeOutput:
        sampling = comfy_host.SamplingSettings(seed, steps, cfg, sampler_name, scheduler, denoise)
        template, out, preview = comfy_host.draw_layout_template(model, sampling, positive, negative, latent_image)
        height, width = latent_image["samples"].shape[-2] * 8, latent_image["samples"].shape[-1] * 8
        return io.NodeOutput(template, out, map_preview(preview, height, width))


NODES = [DrawLayoutTemplate]
