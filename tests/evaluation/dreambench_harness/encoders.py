"""The metric encoders of DreamBench (Ruiz et al., *DreamBooth*, arXiv 2208.12242, section 4.1): DINO ViT-S/16
for subject fidelity, CLIP ViT-B/32 for subject (CLIP-I) and text (CLIP-T) fidelity.

Weights come from the user's machine only: a folder given with --dino / --clip, or the Hugging Face hub cache
(``from_pretrained(..., local_files_only=True)``); nothing is downloaded at run time. For smoke tests the same
architectures are built with random weights.

Preprocessing, one function for both encoders, on PIL images: bicubic resize of the shortest side, centre crop,
scale to 0..1, normalise per channel.
- DINO: 256 -> 224 with ImageNet mean/std, DINO's own evaluation transform
  (Resize(256, bicubic), CenterCrop(224), Normalize(ImageNet)).
- CLIP: 224 -> 224 with CLIP's mean/std, the numbers of openai/clip-vit-base-patch32's preprocessor_config.json and
  of OpenAI's own CLIP preprocessing (a test checks it against transformers' CLIP image processor).
Embeddings: DINO's [CLS] token of the last layer (after its final layer norm), CLIP's projected image and text
embeddings; all L2-normalised.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DINO_REPO = "facebook/dino-vits16"
CLIP_REPO = "openai/clip-vit-base-patch32"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CLIP_CONTEXT = 77  # CLIP's text length: longer prompts are truncated, as CLIP's own tokenizer does


@dataclass(frozen=True)
class Preprocessing:
    resize_shortest_side: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DINO_PREPROCESSING = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)
CLIP_PREPROCESSING = Preprocessing(224, 224, CLIP_MEAN, CLIP_STD)


def preprocess(images: list[Image.Image], how: Preprocessing) -> torch.Tensor:
    """[N, 3, crop, crop] float32: shortest side resized (bicubic), centre-cropped, normalised."""
    batch = []
    for image in images:
        image = image.convert("RGB")
        width, height = image.size
        scale = how.resize_shortest_side / min(width, height)
        # The long side is truncated, as torchvision's Resize computes it.
        size = (how.resize_shortest_side, int(height * scale)) if width <= height else (int(width * scale), how.resize_shortest_side)
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = round((size[0] - how.crop) / 2), round((size[1] - how.crop) / 2)
        image = image.crop((left, top, left + how.crop, top + how.crop))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        batch.append((pixels - np.asarray(how.mean, np.float32)) / np.asarray(how.std, np.float32))
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


class EncoderMissing(RuntimeError):
    """A metric encoder's weights are not on this machine; the message says what to download."""


@dataclass
class MetricEncoders:
    dino: torch.nn.Module  # transformers ViTModel, ViT-S/16
    clip: torch.nn.Module  # transformers CLIPModel, ViT-B/32
    tokenizer: object  # CLIP's BPE tokenizer
    device: torch.device
    description: str  # where the weights came from, for the logs and the run settings

    @torch.inference_mode()
    def dino_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = preprocess(images, DINO_PREPROCESSING).to(self.device)
        cls_token = self.dino(pixel_values=pixels).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(cls_token.float(), dim=-1).cpu()

    @torch.inference_mode()
    def clip_image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = preprocess(images, CLIP_PREPROCESSING).to(self.device)
        # vision_model + visual_projection rather than get_image_features, whose return type changed across
        # transformers versions.
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(self.clip.visual_projection(pooled).float(), dim=-1).cpu()

    @torch.inference_mode()
    def clip_text_embeddings(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=CLIP_CONTEXT, return_tensors="pt")
        pooled = self.clip.text_model(input_ids=tokens["input_ids"].to(self.device),
                                      attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return torch.nn.functional.normalize(self.clip.text_projection(pooled).float(), dim=-1).cpu()


def _local(loader, source: str, repo: str, option: str, what: str, **kwargs):
    try:
        return loader(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise EncoderMissing(
            f"the {what} encoder '{source}' is not on this machine ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Download it once into the Hugging Face cache with `hf download {repo}` "
            f"(or `huggingface-cli download {repo}`), or pass {option} /path/to/a/copy of {repo} "
            "(a folder with its config.json and weights)") from exc


def load_encoders(dino_source: str, clip_source: str, device: torch.device) -> MetricEncoders:
    """The real encoders from a folder or the hub cache; EncoderMissing names what to download."""
    from transformers import AutoTokenizer, CLIPModel, ViTModel

    dino = _local(ViTModel.from_pretrained, dino_source, DINO_REPO, "--dino", "DINO ViT-S/16", add_pooling_layer=False)
    clip = _local(CLIPModel.from_pretrained, clip_source, CLIP_REPO, "--clip", "CLIP ViT-B/32")
    tokenizer = _local(AutoTokenizer.from_pretrained, clip_source, CLIP_REPO, "--clip", "CLIP ViT-B/32 tokenizer of the")
    return MetricEncoders(dino.eval().to(device), clip.eval().to(device), tokenizer, device,
                          f"DINO {dino_source}, CLIP {clip_source}")


def dino_vits16_config():
    """facebook/dino-vits16's architecture: ViT-S/16, 384 wide, 12 layers, 6 heads, 224 px."""
    from transformers import ViTConfig

    return ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                     patch_size=16, image_size=224, qkv_bias=True)


def clip_vit_b32_config():
    """openai/clip-vit-base-patch32's architecture: ViT-B/32 image tower, 12-layer 512-wide text tower, 512-d projection."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
                     "max_position_embeddings": CLIP_CONTEXT},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                       "patch_size": 32, "image_size": 224},
        projection_dim=512)


@functools.cache
def random_encoders(device: torch.device, tokenizer_folder: str, seed: int = 0) -> MetricEncoders:
    """The real architectures with random weights (seeded, so every process builds the same ones) and CLIP's real
    tokenizer from a local folder: the pipeline runs without downloads, the scores mean nothing. Cached: building
    the 150 M-parameter CLIP takes seconds."""
    from transformers import AutoTokenizer, CLIPModel, ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dino = ViTModel(dino_vits16_config(), add_pooling_layer=False).eval()
        clip = CLIPModel(clip_vit_b32_config()).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    return MetricEncoders(dino.to(device), clip.to(device), tokenizer, device,
                          f"random weights at the architectures of {DINO_REPO} and {CLIP_REPO}")


def comfyui_clip_tokenizer_folder() -> Path:
    """CLIP's BPE tokenizer files that ComfyUI ships for SD1.x (the same vocabulary as every OpenAI CLIP)."""
    import comfy.sd1_clip

    return Path(comfy.sd1_clip.__file__).parent / "sd1_tokenizer"
