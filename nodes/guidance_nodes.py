"""The guided sampler: a KSampler with Pick-and-Draw's appearance and layout guidance."""

from __future__ import annotations

from comfy_api.latest import io

from . import comfy_host
from .types import LayoutTemplate, Palette, ksampler_inputs


# The strength chosen on the toy world's tuning seeds, where guidance raised the vanilla model's identity without
# costing its prompt fidelity, and raised the personalised LoRA's fidelity and layout diversity while keeping its
# identity (tests/evaluation/toy_world/README.md).
DEFAULT_STRENGTH = 0.2


def _guidance_inputs() -> list:
    """The stores and knobs shared by the guided sampler and the guider."""
    return [
        Palette.Input("palette", optional=True, tooltip="Appearance to pick from; leave empty for layout only."),
        LayoutTemplate.Input("layout_template", optional=True, tooltip="Layout to draw towards; leave empty for appearance only."),
        io.Float.Input("appearance_weight", default=1.0, min=0.0, max=100.0, step=0.05,
                       tooltip="Share of the appearance term in the guidance direction (the weights are normalised: "
                               "1 and 1 is half each; 0 turns the term off)."),
        io.Float.Input("layout_weight", default=1.0, min=0.0, max=100.0, step=0.05,
                       tooltip="Share of the layout term in the guidance direction (the weights are normalised: "
                               "1 and 1 is half each; 0 turns the term off)."),
        io.Float.Input("appearance_end", default=0.8, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps at which the appearance term stops. It starts at "
                               f"{comfy_host.GuidanceSettings.appearance_start:g} of the steps, once the subject's place "
                               "is drawn."),
        io.Float.Input("layout_end", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps during which the layout term is on, from the first step."),
        io.Float.Input("strength", default=DEFAULT_STRENGTH, min=0.0, max=10.0, step=0.05,
                       tooltip="How far each guided step moves the prediction, relative to the sampler's own update at "
                               "that step: 1.0 moves it as far as the whole noise estimate of the step, 0 is a plain "
                               "KSampler. Useful range about 0.1-1; the same value means the same on every model."),
    ]


def _guidance(strength, appearance_weight, layout_weight, appearance_end, layout_end) -> comfy_host.GuidanceSettings:
    return comfy_host.GuidanceSettings(strength, appearance_weight=appearance_weight, layout_weight=layout_weight,
                                       appearance_end=appearance_end, layout_end=layout_end)


class GuidedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_GuidedKSampler",
            display_name="Guided KSampler (Pick-and-Draw)",
            category="pick_and_draw",
            description="KSampler whose conditional prediction is guided towards the palette's appearance and "
                        "the template's layout (Pick-and-Draw, arXiv 2401.16762).",
            inputs=[
                *ksampler_inputs("Noise seed; a layout template must have been drawn with the same one.",
                                 "The model to sample with: the personalised one (LoRA, DreamBooth) or the vanilla one."),
                *_guidance_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                appearance_weight, layout_weight, appearance_end, layout_end, strength,
                palette=None, layout_template=None) -> io.NodeOutput:
        sampling = comfy_host.SamplingSettings(seed, steps, cfg, sampler_name, scheduler, denoise)
        guidance = _guidance(strength, appearance_weight, layout_weight, appearance_end, layout_end)
        out, _ = comfy_host.guided_sample(model, sampling, positive, negative, latent_image, palette, layout_template,
                                          guidance)
        return io.NodeOutput(out)


class PickAndDrawGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_Guider",
            display_name="Pick-and-Draw Guider",
            category="pick_and_draw",
            description="A CFG guider with Pick-and-Draw guidance, for SamplerCustomAdvanced. The template's seed and "
                        "schedule cannot be checked here: draw it with the same noise seed and sigmas.",
            inputs=[
                io.Model.Input("model", tooltip="The model to sample with: the personalised one (LoRA, DreamBooth) "
                                                "or the vanilla one."),
                io.Conditioning.Input("positive", tooltip="From 'Subject Prompt (Pick-and-Draw)'."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (any text encode node)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (about 5-8 for SD1.x and SDXL)."),
                *_guidance_inputs(),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, appearance_weight, layout_weight, appearance_end, layout_end,
                strength, palette=None, layout_template=None) -> io.NodeOutput:
        guidance = _guidance(strength, appearance_weight, layout_weight, appearance_end, layout_end)
        guider, _ = comfy_host.guided_cfg_guider(model, positive, negative, cfg, palette, layout_template, guidance)
        return io.NodeOutput(guider)


NODES = [GuidedKSampler, PickAndDrawGuider]
