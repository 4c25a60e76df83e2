"""The toy world's models as ComfyUI objects: an SD1-family UNet, an SD1 CLIP text encoder and a small KL
autoencoder, built from ComfyUI's own classes with the configurations they were trained with.

Part of the host adapter (it imports ComfyUI). The weights ship in nodes/toy_world/weights/; the training command that
made them is tests/evaluation/toy_world/train.py, which builds its networks with the same functions.
"""

from __future__ import annotations

import functools
import json
import types
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parents[1] / "toy_world" / "weights"

# An SD1.x UNet at toy size: three levels (16, 8 and 4 latent pixels for a 128 px image), one transformer per
# block, eight heads as in SD1.x; 64 context channels from the text encoder below.
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 16, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False,
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 4],
    "transformer_depth": [1, 1, 1], "transformer_depth_output": [1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 64,
}

# CLIP's text transformer at toy size, with SD1.x's real tokenizer (the vocabulary size is the tokenizer's).
CLIP_TEXT_CONFIG = {
    "hidden_act": "quick_gelu", "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
    "num_hidden_layers": 3, "max_position_embeddings": 77, "vocab_size": 49408, "layer_norm_eps": 1e-5,
    "projection_dim": 64, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1,
}

# A KL autoencoder of SD's architecture (factor 8, 4 latent channels) at toy width; its latents are scaled at
# training time to SD1.x's latent statistics, so SD1.x's latent format (scale 0.18215) applies unchanged.
VAE_CONFIG = {
    "embed_dim": 4,
    "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 128, "in_channels": 3, "out_ch": 3, "ch": 32,
                 "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
}


def model_config():
    """ComfyUI's SD1.5 config class with the toy UNet's configuration (an SD1-family model to the pack)."""
    import comfy.supported_models

    return comfy.supported_models.SD15(dict(UNET_CONFIG))


def build_unet(device="cpu"):
    """ComfyUI's BaseModel (UNetModel inside) for the toy configuration, weights not loaded.

    The toy UNet predicts v, as SD 2.x's 768-v models do, not SD1.x's noise: at the highest sigma an
    epsilon-predicting model's error reaches the denoised image multiplied by sigma (about 15 on this schedule),
    and a UNet this small, trained this briefly, copied the starting noise into most pictures."""
    import comfy.model_base

    config = model_config()
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION,
                                      device=torch.device(device))


def build_clip(state_dict: dict | None = None, embedding_directory: str | None = None):
    """ComfyUI's CLIP object (SD1 tokenizer and SD1 CLIP model classes) with the toy text encoder."""
    import comfy.sd
    import comfy.sd1_clip

    model = functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=comfy.sd1_clip.SDClipModel,
                              textmodel_json_config=dict(CLIP_TEXT_CONFIG))
    target = types.SimpleNamespace(params={}, clip=model, tokenizer=comfy.sd1_clip.SD1Tokenizer)
    clip = comfy.sd.CLIP(target=target, embedding_directory=embedding_directory)
    if state_dict is not None:
        missing, unexpected = clip.cond_stage_model.load_state_dict(state_dict, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise ValueError(f"the toy text encoder's weights do not match its configuration "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return clip


def build_vae(state_dict: dict):
    """ComfyUI's VAE object for the toy autoencoder."""
    import comfy.sd

    return comfy.sd.VAE(sd=state_dict, config={"params": VAE_CONFIG})


def load(weights: Path = WEIGHTS):
    """(MODEL, CLIP, VAE) of the shipped toy world, as a checkpoint loader returns them."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils

    files = {name: weights / f"toy_world_{name}.safetensors" for name in ("unet", "clip", "vae")}
    absent = [str(path) for path in files.values() if not path.is_file()]
    if absent:
        raise FileNotFoundError(f"the toy world's weights are missing ({', '.join(absent)}): reinstall the pack, or "
                                "train them with tests/evaluation/toy_world/train.py")
    model = build_unet()
    unet_state = comfy.utils.load_torch_file(str(files["unet"]), safe_load=True)
    model.diffusion_model.load_state_dict(unet_state, strict=True)
    # The patcher ComfyUI's own checkpoint loaders use: since its 2026 releases the dynamic-VRAM one on GPUs where
    # that is on (CoreModelPatcher), before them the plain ModelPatcher.
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(model, load_device=comfy.model_management.get_torch_device(),
                            offload_device=comfy.model_management.unet_offload_device())
    clip = build_clip(comfy.utils.load_torch_file(str(files["clip"]), safe_load=True))
    vae = build_vae(comfy.utils.load_torch_file(str(files["vae"]), safe_load=True))
    return patcher, clip, vae


def training_record(weights: Path = WEIGHTS) -> dict:
    """The configuration and log the shipped weights were trained with."""
    path = weights / "training.json"
    return json.loads(path.read_text()) if path.is_file() else {}
