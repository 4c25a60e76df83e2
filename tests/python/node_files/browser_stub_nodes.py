"""Test-only ComfyUI nodes for the browser test: checkpoint loaders that build tiny random-weight models.

The browser test installs this module as a custom node package of the ComfyUI server it starts, and swaps
each workflow's CheckpointLoaderSimple for one of these loaders: same `ckpt_name` input, same MODEL, CLIP
and VAE outputs, so the graph the page queues is the shipped one with only the loader swapped. Real
weights are neither present nor downloadable in the tests; the models come from ComfyUI's own classes
(see comfy_env.py) and the VAE is ComfyUI's VAE around a TAESD-shaped network with random weights, so
VAE Encode/Decode, previews and Save Image run ComfyUI's real code paths.
"""

from __future__ import annotations

import torch

import comfy_env

# Which CheckpointLoaderSimple stand-in a workflow gets, by model family.
SD1_LOADER = "PickDrawTest_TinySD1CheckpointLoader"
SDXL_LOADER = "PickDrawTest_TinySDXLCheckpointLoader"


def tiny_vae(seed: int = 0):
    """A comfy.sd.VAE (8x down/upscaling, 4 latent channels, as SD1.x and SDXL) with random weights."""
    import comfy.sd
    from comfy.taesd.taesd import TAESD

    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in TAESD().state_dict().items()}
    state.update(vae_scale=torch.tensor(1.0), vae_shift=torch.tensor(0.0))  # identity latent scaling
    return comfy.sd.VAE(sd=state)


def write_tiny_sd1_lora(path, rank: int = 4, seed: int = 0):
    """A LoRA file for the tiny SD1.x loader's models (comfy_env.tiny_sd1_lora): LoraLoader really patches both
    models (ComfyUI logs "lora key not loaded" for any name it cannot place). Returns the LoRA's layer names."""
    from safetensors.torch import save_file

    tensors = comfy_env.tiny_sd1_lora(comfy_env.tiny_sd1_patcher(), comfy_env.tiny_clip(), rank, seed)
    save_file(tensors, str(path))
    return sorted({name.split(".")[0] for name in tensors})


class _TinyCheckpointLoader:
    """CheckpointLoaderSimple's input and outputs; the chosen file is listed, never read."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "pickdraw_test"

    @classmethod
    def INPUT_TYPES(cls):
        import nodes  # ComfyUI's built-in nodes (the server's top-level module)

        return nodes.CheckpointLoaderSimple.INPUT_TYPES()


class TinySD1CheckpointLoader(_TinyCheckpointLoader):
    def load_checkpoint(self, ckpt_name):
        return comfy_env.tiny_sd1_patcher(), comfy_env.tiny_clip(), tiny_vae()


class TinySDXLCheckpointLoader(_TinyCheckpointLoader):
    def load_checkpoint(self, ckpt_name):
        return comfy_env.tiny_sdxl_patcher(for_tiny_clip=True), comfy_env.tiny_sdxl_clip(), tiny_vae()


NODE_CLASS_MAPPINGS = {SD1_LOADER: TinySD1CheckpointLoader, SDXL_LOADER: TinySDXLCheckpointLoader}
NODE_DISPLAY_NAME_MAPPINGS = {SD1_LOADER: "Tiny SD1.x checkpoint (test)", SDXL_LOADER: "Tiny SDXL checkpoint (test)"}
