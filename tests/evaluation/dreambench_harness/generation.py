"""Making one DreamBench image with Pick-and-Draw through the code the nodes run (nodes/comfy_host/), under
torch.inference_mode() as ComfyUI executes its nodes:

- Subject Prompt: ``subject_tokens`` + ``with_subject`` on the CLIP's encoding of the prompt;
- Pick Palette: ``pick_palette`` from the subject's reference photo (its first, centre-cropped and resized) with
  the reference prompt, once per subject;
- Draw Layout Template: ``draw_layout_template`` with the vanilla model and the class-noun prompt, with the image's
  seed, once per (subject, prompt, seed);
- Guided KSampler: ``guided_sample`` with the palette and the template, one image per strength > 0.

Strength 0 is the unguided baseline. For a subject with no personalisation it is the template run itself: the same
model, prompt, seed and sampler as a plain KSampler (the template pass records maps as it samples). For a
personalised subject it is ComfyUI's KSampler (``common_ksampler``, which the Guided KSampler wraps) with the
personalised model: the DreamBooth / LoRA / Textual-Inversion image without guidance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from .dataset import Subject, format_prompt
from .models import ModelSource, SubjectModels
from .results import Job


@dataclass(frozen=True)
class SamplingSettings:
    size: int  # square images; a multiple of 8
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    negative: str
    reference_prompt: str  # "{subject}" stands for the subject's words, e.g. "a photo of a {subject}"
    tau: float  # the palette's saliency threshold
    appearance_weight: float
    layout_weight: float
    appearance_end: float
    layout_end: float

    def guidance_weights(self) -> dict:
        """The Guided KSampler's weight inputs, as the node passes them."""
        return {"appearance_weight": self.appearance_weight, "layout_weight": self.layout_weight,
                "appearance_end": self.appearance_end, "layout_end": self.layout_end}

    def as_dict(self) -> dict:
        return asdict(self)


def subject_words(models: SubjectModels, subject: Subject) -> str:
    """How the prompt names the subject: "sks dog", or the class noun alone."""
    return f"{models.identifier} {subject.class_noun}".strip()


def reference_image(subject: Subject, size: int) -> torch.Tensor:
    """The subject's first photo as a ComfyUI IMAGE [1, size, size, 3]: centre-cropped to a square, resized."""
    with Image.open(subject.images[0]) as photo:
        photo = photo.convert("RGB")
        side = min(photo.size)
        left, top = (photo.width - side) // 2, (photo.height - side) // 2
        photo = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).unsqueeze(0)


def image_pixels(image: torch.Tensor) -> np.ndarray:
    """uint8 [H, W, 3] of the first image of an IMAGE batch, converted as ComfyUI's Save Image does."""
    return np.clip(255.0 * image[0].float().cpu().numpy(), 0, 255).astype(np.uint8)


class PickAndDrawGenerator:
    """Images for jobs taken group by group: the palette of the current subject and the layout template of the
    current (subject, prompt, seed) are kept until the next one is needed."""

    def __init__(self, host, models: ModelSource, settings: SamplingSettings):
        if settings.size % 8:
            raise ValueError(f"--size {settings.size}: the image side must be a multiple of 8 (the latent is 1/8 of it)")
        self.host, self.models, self.settings = host, models, settings
        self._palette: tuple[str, object] | None = None
        self._group: tuple[tuple, dict] | None = None

    def _subject_prompt(self, clip, text: str, subject: str):
        """What the Subject Prompt node outputs."""
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return self.host.with_subject(conditioning, self.host.subject_tokens(clip, text, subject))

    def _plain_prompt(self, clip, text: str):
        """What CLIP Text Encode outputs (the negative prompt)."""
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    def _latent(self) -> dict:
        side = self.settings.size // 8
        return {"samples": torch.zeros(1, 4, side, side)}

    def palette(self, subject: Subject, models: SubjectModels):
        if self._palette is None or self._palette[0] != subject.name:
            s = self.settings
            words = subject_words(models, subject)
            positive = self._subject_prompt(models.clip, s.reference_prompt.format(subject=words), words)
            palette, _, _ = self.host.pick_palette(models.model, self.models.vae, reference_image(subject, s.size), positive,
                                                   s.steps, s.scheduler, tau=s.tau)
            self._palette = (subject.name, palette)
        return self._palette[1]

    def _group_state(self, subject: Subject, template: str, job: Job, models: SubjectModels, needs_template: bool) -> dict:
        """The prompts of the job's group and, when needed, its layout template and template latent."""
        if self._group is None or self._group[0] != job.group:
            s = self.settings
            class_prompt = format_prompt(template, "", subject.class_noun)
            state = {"vanilla_positive": self._subject_prompt(self.models.clip, class_prompt, subject.class_noun),
                     "vanilla_negative": self._plain_prompt(self.models.clip, s.negative)}
            if models.personalised:
                words = subject_words(models, subject)
                state["positive"] = self._subject_prompt(models.clip, format_prompt(template, models.identifier, subject.class_noun), words)
                state["negative"] = self._plain_prompt(models.clip, s.negative)
            else:
                state["positive"], state["negative"] = state["vanilla_positive"], state["vanilla_negative"]
            self._group = (job.group, state)
        state = self._group[1]
        if needs_template and "template" not in state:
            s = self.settings
            state["template"], state["template_latent"], _ = self.host.draw_layout_template(self.models.model,
                                                                                            self.host.SamplingSettings(job.seed, s.steps, s.cfg, s.sampler, s.scheduler),
                                                                                            state["vanilla_positive"],
                                                                                            state["vanilla_negative"],
                                                                                            self._latent())
        return state

    def image(self, subject: Subject, template: str, job: Job) -> np.ndarray:
        """The job's image as uint8 [size, size, 3]."""
        s = self.settings
        with torch.inference_mode():
            models = self.models.for_subject(subject.name)
            needs_template = job.strength != 0.0 or not models.personalised
            state = self._group_state(subject, template, job, models, needs_template)
            if job.strength == 0.0 and not models.personalised:
                latent = state["template_latent"]
            elif job.strength == 0.0:
                import nodes as comfy_nodes  # ComfyUI's nodes.py: common_ksampler is its KSampler

                (latent,) = comfy_nodes.common_ksampler(models.model, job.seed, s.steps, s.cfg, s.sampler, s.scheduler,
                                                        state["positive"], state["negative"], self._latent(), denoise=1.0)
            else:
                latent, _ = self.host.guided_sample(models.model,
                                                    self.host.SamplingSettings(job.seed, s.steps, s.cfg, s.sampler, s.scheduler, 1.0),
                                                    state["positive"], state["negative"], self._latent(),
                                                    self.palette(subject, models), state["template"],
                                                    self.host.GuidanceSettings(job.strength, **s.guidance_weights()))
            return image_pixels(self.models.vae.decode(latent["samples"]))
