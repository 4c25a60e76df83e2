"""Real ComfyUI for the tests: found through COMFYUI_PATH or the custom_nodes layout, else skipped.

Builds tiny SD-shaped models from ComfyUI's own classes with random weights (no downloads).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import PACK_NAME, ROOT, import_pack


def comfyui_path() -> Path | None:
    candidates = [os.environ.get("COMFYUI_PATH")]
    if ROOT.parent.name == "custom_nodes":  # ComfyUI/custom_nodes/<pack>
        candidates.append(str(ROOT.parent.parent))
    for c in candidates:
        if c and (Path(c) / "comfy" / "model_patcher.py").is_file():
            return Path(c)
    return None


def require_comfyui():
    path = comfyui_path()
    if path is None:
        pytest.skip("ComfyUI checkout not found: set COMFYUI_PATH to one (or install the pack in ComfyUI/custom_nodes)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = not torch.cuda.is_available()  # before comfy.model_management is imported
        import comfy.model_management  # noqa: F401
        import comfy.sample  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"ComfyUI at {path} cannot be imported ({exc}); install its requirements.txt")
    import_pack()
    return importlib.import_module(f"{PACK_NAME}.nodes.comfy_host")


def host_for_script():
    """The pack's host adapter for a command-line script (benchmarks, reports), with ComfyUI's console
    progress bars off; None after printing why when ComfyUI cannot be found or imported."""
    try:
        host = require_comfyui()
    except BaseException as exc:  # pytest.skip raises an exception of its own
        print(f"ComfyUI is needed: {exc}", file=sys.stderr)
        return None
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    return host


TINY_SD1 = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False,
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 64,
}


# Full-size UNet configs as ComfyUI's model detection produces them for SD1.5 and SDXL checkpoints
# (859.5 M and 2.57 G parameters): for benchmarks and reports on a GPU, with random weights.
SD15_FULL = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False,
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
}
SDXL_FULL = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": 2816, "num_classes": "sequential", "use_temporal_resblock": False,
    "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
    "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
}


def _random_patcher(config_class, unet_config: dict, seed: int, device="cpu", dtype=torch.float32, std=0.05,
                    manual_cast_dtype=None):
    """A ModelPatcher of ComfyUI's config class with the given UNet config and random weights (drawn on
    `device`, kept there; stored in `dtype`, computed in `manual_cast_dtype` when given, as ComfyUI runs fp8
    weights). ComfyUI's layers skip initialisation, as weights are always loaded: random values are set here."""
    import comfy.model_patcher

    device = torch.device(device)
    config = config_class(dict(unet_config))
    config.set_inference_dtype(dtype, manual_cast_dtype)
    model = config.get_model({}, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for tensor in model.diffusion_model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator, device=device) * std)
    model.diffusion_model.to(device)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def full_size_patcher(family: str, device, dtype=torch.float16, seed: int = 0):
    """An SD1.5- or SDXL-shaped ModelPatcher at full size with random weights (std 0.02; the benchmark and
    the report check that outputs stay finite), on `device`: weights do not change speed or memory."""
    import comfy.supported_models

    config_class, unet_config = {"sd1": (comfy.supported_models.SD15, SD15_FULL),
                                 "sdxl": (comfy.supported_models.SDXL, SDXL_FULL)}[family]
    return _random_patcher(config_class, unet_config, seed, device=device, dtype=dtype, std=0.02)


def tiny_sd1_patcher(seed: int = 0, dtype=torch.float32, manual_cast_dtype=None):
    """An SD1.x-shaped ModelPatcher (about 1 M parameters) with random weights, on the CPU."""
    import comfy.supported_models

    return _random_patcher(comfy.supported_models.SD15, TINY_SD1, seed, dtype=dtype, manual_cast_dtype=manual_cast_dtype)


def tiny_sd1_lora(patcher, clip=None, rank: int = 4, seed: int = 0) -> dict:
    """A LoRA state dict in kohya's key names for a tiny SD1.x model: low-rank updates of every cross-attention key
    projection of the UNet and, with `clip`, of the first text-encoder layer's key projection. Names and shapes come
    from ComfyUI's own LoRA key maps."""
    import comfy.lora

    names = comfy.lora.model_lora_keys_unet(patcher.model, {})
    weights = dict(patcher.model.state_dict())
    chosen = [n for n in names if n.startswith("lora_unet_") and n.endswith("_attn2_to_k")]
    if clip is not None:
        names = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, names)
        weights.update(clip.cond_stage_model.state_dict())
        chosen.append("lora_te_text_model_encoder_layers_0_self_attn_k_proj")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in chosen:
        out_features, in_features = weights[names[name]].shape
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    return tensors


def conditioning(seed: int, batch: int = 1, context_dim: int = 64):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 77, context_dim, generator=generator), {}]]


def sharpen_cross_attention(patcher, factor: float = 20.0):
    """Scales the cross-attention query and key projections in place.

    With random weights of std 0.05 the attention logits are tiny and the maps nearly uniform, so they
    barely respond to the latent; sharper logits make the maps (and features) depend on the latent as a
    trained model's do, which is what a test of guidance needs.
    """
    with torch.no_grad():
        for name, parameter in patcher.model.diffusion_model.named_parameters():
            if "attn2.to_q" in name or "attn2.to_k" in name:
                parameter.copy_(parameter.float() * factor)  # through float32: float8 has no in-place multiply
    return patcher


TINY_CLIP_TEXT = {
    "hidden_act": "quick_gelu", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
    "num_hidden_layers": 2, "max_position_embeddings": 77, "vocab_size": 49408, "layer_norm_eps": 1e-5,
    "projection_dim": 64, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1,
}


def tiny_clip(seed: int = 0, embedding_directory: str | None = None):
    """A ComfyUI CLIP with SD1.x's real tokenizer and a 2-layer, 64-wide text encoder (random weights);
    its 64-channel output matches the tiny UNet's context_dim."""
    import functools
    import types as pytypes

    import comfy.sd
    import comfy.sd1_clip

    model = functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=comfy.sd1_clip.SDClipModel,
                              textmodel_json_config=dict(TINY_CLIP_TEXT))
    target = pytypes.SimpleNamespace(params={}, clip=model, tokenizer=comfy.sd1_clip.SD1Tokenizer)
    return _randomised(comfy.sd.CLIP(target=target, embedding_directory=embedding_directory), seed)


def _randomised(clip, seed: int):
    """ComfyUI's layers skip initialisation (weights are always loaded): small random values instead."""
    generator = torch.Generator().manual_seed(seed)
    state = clip.cond_stage_model.state_dict()
    clip.cond_stage_model.load_state_dict(
        {k: torch.randn(v.shape, generator=generator) * 0.02 if v.is_floating_point() else v for k, v in state.items()})
    return clip


class PoolingVae:
    """Stands in for a VAE in node tests: 8x average pooling of the RGB image, then 4 latent channels."""

    def encode(self, pixels):
        pooled = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1) * 2 - 1

    def decode(self, samples):
        """An IMAGE [B, 8h, 8w, 3] in 0..1 from the first three latent channels, standardised per image (a random
        model's latents are far from unit scale; unscaled, the sigmoid would saturate to black and white)."""
        rgb = samples[:, :3].float()
        rgb = (rgb - rgb.mean(dim=(1, 2, 3), keepdim=True)) / (rgb.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return torch.nn.functional.interpolate(rgb, scale_factor=8).movedim(1, -1).sigmoid()


TINY_SDXL = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": 2816, "num_classes": "sequential", "use_temporal_resblock": False, "use_temporal_attention": False,
    "in_channels": 4, "out_channels": 4, "model_channels": 64, "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2],
    "transformer_depth": [0, 1, 2], "transformer_depth_output": [2, 2, 1, 1, 0, 0], "transformer_depth_middle": 2,
    "use_linear_in_transformer": True, "context_dim": 64,  # SDXL sets 64 channels per head: widths of 64+
}


def tiny_sdxl_patcher(seed: int = 0, for_tiny_clip: bool = False, dtype=torch.float32):
    """An SDXL-shaped ModelPatcher (SDXL's config class, ADM size conditioning, linear projections in the
    transformers) with tiny widths and random weights, on the CPU. With for_tiny_clip it takes
    tiny_sdxl_clip()'s conditioning (128 context channels, 64-wide pooled output + SDXL's 6 x 256 size
    embeddings); otherwise 64 channels and SDXL's 1280-wide pooled output (sdxl_conditioning())."""
    import comfy.supported_models

    sizes = {"context_dim": 128, "adm_in_channels": 64 + 6 * 256} if for_tiny_clip else {}
    return _random_patcher(comfy.supported_models.SDXL, dict(TINY_SDXL, **sizes), seed, dtype=dtype)


def tiny_sdxl_clip(seed: int = 0):
    """A ComfyUI CLIP with SDXL's real tokenizers (CLIP-L and CLIP-G) and two tiny text encoders: 64 + 64
    context channels and a 64-wide pooled output (see tiny_sdxl_patcher(for_tiny_clip=True))."""
    import types as pytypes

    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip

    class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        # SDXLClipModel's encoding with its two encoders replaced by tiny ones of the same kinds.
        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=dict(TINY_CLIP_TEXT, num_hidden_layers=3), model_options=model_options)
            self.clip_g = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=dict(TINY_CLIP_TEXT, num_hidden_layers=3, hidden_act="gelu"),
                special_tokens={"start": 49406, "end": 49407, "pad": 0}, return_projected_pooled=True,
                model_options={**model_options, "model_name": "clip_g"})
            self.dtypes = {dtype}

    target = pytypes.SimpleNamespace(params={}, clip=TinySDXLClipModel, tokenizer=comfy.sdxl_clip.SDXLTokenizer)
    return _randomised(comfy.sd.CLIP(target=target), seed)


def sdxl_conditioning(seed: int, context_dim: int = 64):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, context_dim, generator=generator),
             {"pooled_output": torch.randn(1, 1280, generator=generator), "width": 128, "height": 128}]]


def subject_conditioning(family: str, seed: int, context_dim: int, indices=(2, 3)):
    """(positive, negative) conditionings of random prompt embeddings for a family's UNet, the positive one
    carrying a subject at token positions `indices`, as 'Subject Prompt (Pick-and-Draw)' makes it."""
    import importlib

    host = importlib.import_module(f"{PACK_NAME}.nodes.comfy_host")
    make = sdxl_conditioning if family == "sdxl" else conditioning
    subject = {"subject": "subject", "prompt": "a photo of a subject", "indices": list(indices)}
    positive = host.with_subject(make(seed, context_dim=context_dim), subject)
    return positive, make(seed + 1, context_dim=context_dim)


def guidance_stores(patcher, positive, negative, seed: int, steps: int, cfg: float, latent_size: int,
                    reference_seed: int = 101, palette_positive=None):
    """(palette, layout template) made by the pack's own capture passes: the template from the vanilla run
    of `seed` with `positive`, the palette from the inversion of a random reference image with
    `palette_positive` (default: `positive`), both with this MODEL."""
    host = importlib.import_module(f"{PACK_NAME}.nodes.comfy_host")
    latent = {"samples": torch.zeros(1, 4, latent_size, latent_size)}
    template, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(seed, steps, cfg, "euler", "normal"),
                                               positive, negative, latent)
    reference = torch.rand(1, latent_size * 8, latent_size * 8, 3, generator=torch.Generator().manual_seed(reference_seed))
    palette, _, _ = host.pick_palette(patcher, PoolingVae(), reference,
                                      positive if palette_positive is None else palette_positive, steps, "normal")
    return palette, template
