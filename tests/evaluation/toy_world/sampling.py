"""The toy world's models through the pack's host adapter: palettes, templates and (guided) samples with one set of
sampling settings, as the evaluation and the main job use them."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

# Two prompts with a position word (fidelity: the subject where the word puts it) and two without (diversity: where
# the model puts the subject over seeds, which a personalised model that copies its training pose narrows).
PROMPTS = (
    ("in the snow", "on the left"),
    ("on the beach", None),
    ("in the desert", "on the right"),
    ("at night", None),
)
REFERENCE = "sks_ball"  # the personalised subject's shipped reference picture
PERSONAL_NAME, CLASS = "sks ball", "ball"


def prompt_text(name: str, scene: str, position: str | None) -> str:
    return " ".join(["a", name, scene] + ([position] if position else []))


def prompt_label(scene: str, position: str | None) -> str:
    """The prompt's scene and layout words, as grids and tables name it."""
    return " ".join([scene] + ([position] if position else []))


class Toy:
    """The toy world's models through the pack's host adapter, and the sampling settings of every cell."""

    def __init__(self, steps: int, cfg: float, weights: Path | None = None):
        """`weights`: a training run's folder (train.py --out) instead of the shipped weights; its LoRA when it has
        one, else the LoRA cells are not available (lora_model None)."""
        import comfy_env

        self.host = comfy_env.require_comfyui()
        import comfy.sd
        import comfy.utils

        comfy.utils.PROGRESS_BAR_ENABLED = False
        self.toy_nodes = importlib.import_module(f"{comfy_env.PACK_NAME}.nodes.toy_world_nodes")
        folder = Path(weights) if weights else self.toy_nodes.toy_model.WEIGHTS
        self.model, self.clip, self.vae = self.toy_nodes.toy_model.load(folder)
        lora_file = folder / self.toy_nodes.LORA.name
        self.lora_model = None
        if lora_file.is_file():
            lora = comfy.utils.load_torch_file(str(lora_file), safe_load=True)
            self.lora_model, _ = comfy.sd.load_lora_for_models(self.model, None, lora, 1.0, 0)
        self.steps, self.cfg = steps, cfg
        self.negative = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(""))
        self.latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def positive(self, text: str, subject: str):
        tokens = self.clip.tokenize(text)
        return self.host.with_subject(self.clip.encode_from_tokens_scheduled(tokens), self.host.subject_tokens(self.clip, text, subject))

    def palette(self, model, image: np.ndarray, prompt: str, subject: str):
        pixels = torch.from_numpy(image).float().div(255).unsqueeze(0)
        palette, _, _ = self.host.pick_palette(model, self.vae, pixels, self.positive(prompt, subject), self.steps, "normal")
        return palette

    def template(self, seed: int, text: str, subject: str):
        template, latent, _ = self.host.draw_layout_template(self.model,
                                                             self.host.SamplingSettings(seed, self.steps, self.cfg, "euler", "normal"),
                                                             self.positive(text, subject), self.negative, self.latent)
        return template, latent

    def sample(self, model, seed: int, text: str, subject: str, palette=None, template=None, strength=0.0,
               appearance_weight=1.0, layout_weight=1.0):
        import nodes as comfy_nodes

        positive = self.positive(text, subject)
        if strength == 0.0 or (palette is None and template is None):
            (out,) = comfy_nodes.common_ksampler(model, seed, self.steps, self.cfg, "euler", "normal", positive,
                                                 self.negative, self.latent)
        else:
            # the step windows are the nodes' defaults (GuidanceSettings')
            weights = {"appearance_weight": appearance_weight if palette is not None else 0.0,
                       "layout_weight": layout_weight if template is not None else 0.0}
            out, _ = self.host.guided_sample(model,
                                             self.host.SamplingSettings(seed, self.steps, self.cfg, "euler", "normal", 1.0),
                                             positive, self.negative, self.latent, palette, template,
                                             self.host.GuidanceSettings(strength, **weights))
        return self.decode(out)

    def decode(self, latent: dict) -> np.ndarray:
        image = self.vae.decode(latent["samples"])[0]
        return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0 when either is missing."""
    if a is None or b is None:
        return 0.0
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
