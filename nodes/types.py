"""The wire types of the pack's node sockets (ComfyUI V3 custom types), all prefixed PICKDRAW_."""

from comfy_api.latest import io

Palette = io.Custom("PICKDRAW_PALETTE")
LayoutTemplate = io.Custom("PICKDRAW_LAYOUT_TEMPLATE")


def ksampler_inputs(seed_tooltip: str, model_tooltip: str) -> list:
    """KSampler's own inputs, in its order, for the nodes that sample like it."""
    import comfy.samplers

    same = "the layout template and the guided run use the same"
    return [
        io.Model.Input("model", tooltip=model_tooltip),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=seed_tooltip),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip=f"Sampling steps, as in KSampler (20-30 usual); {same}."),
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale, as in KSampler (about 5-8 for SD1.x and SDXL)."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                       tooltip=f"ComfyUI's sampler, as in KSampler; {same} one."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                       tooltip=f"ComfyUI's sigma schedule, as in KSampler; {same} one (and the palette, for exact sigmas)."),
        io.Conditioning.Input("positive", tooltip="From 'Subject Prompt (Pick-and-Draw)': it carries the subject's tokens."),
        io.Conditioning.Input("negative", tooltip="The negative prompt (any text encode node)."),
        io.Latent.Input("latent_image", tooltip=f"The starting latent (Empty Latent Image for text-to-image); {same} size."),
        io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip=f"Fraction of the schedule to run, as in KSampler (1 for text-to-image); {same} value."),
    ]
