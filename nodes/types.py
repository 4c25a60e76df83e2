"""The wire types of the pack's node sockets (ComfyUI V3 custom types), all prefixed PICKDRAW_."""

from comfy_api.latest import io

Palette = io.Custom("PICKDRAW_PALETTE")
LayoutTemplate = io.Custom("PICKDRAW_LAYOUT_TEMPLATE")


def ksampler_inputs(seed_tooltip: str = "Noise seed.") -> list:
    """KSampler's own inputs, in its order, for the nodes that sample like it."""
    import comfy.samplers

    return [
        io.Model.Input("model"),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=seed_tooltip),
        io.Int.Input("steps", default=20, min=1, max=10000),
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
        io.Conditioning.Input("positive", tooltip="From 'Subject Prompt (Pick-and-Draw)': it carries the subject's tokens."),
        io.Conditioning.Input("negative"),
        io.Latent.Input("latent_image"),
        io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
    ]
