"""The models the images are made with: the user's checkpoint loaded by ComfyUI (plus a LoRA, a DreamBooth
checkpoint or a Textual-Inversion embedding per personalised subject), or tiny SD1.x-shaped models with random
weights built from ComfyUI's own classes (the test suite's builders) for smoke runs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .personalisation import Personalisation


def _test_helpers():
    """tests/python/comfy_env.py: finds and imports ComfyUI and the pack, and builds the tiny models (importable: the
    entry point, dreambench.py or the tests, has tests/python on sys.path)."""
    import comfy_env

    return comfy_env


def import_comfyui(comfyui: str | None, device: torch.device):
    """ComfyUI on sys.path and the pack's host adapter (nodes/comfy_host/), the code the nodes run."""
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before ComfyUI picks its device: it takes the current one
    if comfyui:
        os.environ["COMFYUI_PATH"] = comfyui
    import pytest

    try:
        host = _test_helpers().require_comfyui()
    except pytest.skip.Exception as exc:
        raise FileNotFoundError(f"ComfyUI is needed ({exc}): pass --comfyui /path/to/ComfyUI or set COMFYUI_PATH, "
                                "with ComfyUI's requirements.txt installed in this Python") from None
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False  # one progress bar per rank, over its images, instead of one per sampling
    return host


@dataclass
class SubjectModels:
    """What one subject's guided runs and palette use; the layout template always uses the vanilla model."""

    model: object  # ComfyUI MODEL (ModelPatcher)
    clip: object  # ComfyUI CLIP
    identifier: str  # "" for the class noun alone
    personalised: bool


class ModelSource:
    """The vanilla model, CLIP and VAE, and each subject's personalised model (the latest one kept loaded: the jobs
    come subject after subject)."""

    def __init__(self, checkpoint: str | None, personalisations: dict[str, Personalisation]):
        self.personalisations = personalisations
        self._current: tuple[str, SubjectModels] | None = None
        if checkpoint is None:
            if personalisations:
                raise ValueError("--personalisation needs a real --checkpoint: the tiny random models have no LoRA, "
                                 "DreamBooth or embedding files to match")
            helpers = _test_helpers()
            self.model = helpers.sharpen_cross_attention(helpers.tiny_sd1_patcher())
            self.clip, self.vae = helpers.tiny_clip(), helpers.PoolingVae()
            return
        import comfy.sd

        self.embedding_folders = sorted({str(p.path.parent) for p in personalisations.values() if p.kind == "embedding"})
        self.model, self.clip, self.vae, *_ = comfy.sd.load_checkpoint_guess_config(
            checkpoint, output_vae=True, output_clip=True, embedding_directory=self.embedding_folders or None)

    def for_subject(self, name: str) -> SubjectModels:
        if self._current is not None and self._current[0] == name:
            return self._current[1]
        self._current = None  # let a previous DreamBooth checkpoint go before loading the next
        chosen = self.personalisations.get(name)
        if chosen is None:
            models = SubjectModels(self.model, self.clip, "", False)
        elif chosen.kind == "embedding":  # the base CLIP was loaded with the embeddings' folders
            models = SubjectModels(self.model, self.clip, chosen.identifier, True)
        elif chosen.kind == "lora":
            import comfy.sd
            import comfy.utils

            lora = comfy.utils.load_torch_file(str(chosen.path), safe_load=True)
            model, clip = comfy.sd.load_lora_for_models(self.model, self.clip, lora, chosen.strength, chosen.strength)
            models = SubjectModels(model, clip, chosen.identifier, True)
        else:  # a whole DreamBooth checkpoint: its UNet and text encoder; the base VAE decodes
            import comfy.sd

            model, clip, *_ = comfy.sd.load_checkpoint_guess_config(
                str(chosen.path), output_vae=False, output_clip=True, embedding_directory=self.embedding_folders or None)
            models = SubjectModels(model, clip, chosen.identifier, True)
        self._current = (name, models)
        return models
