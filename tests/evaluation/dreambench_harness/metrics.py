"""DreamBench's scores of one generated image (Ruiz et al., *DreamBooth*, arXiv 2208.12242, section 4.1).

- DINO: the mean cosine similarity between the image's DINO embedding and those of all the subject's real photos.
- CLIP-I: the same with CLIP image embeddings.
- CLIP-T: the cosine similarity between the image's CLIP embedding and the prompt's.

The paper reports each as an average over generated images of these pairwise similarities; since every image of a
subject meets the same real photos, the mean of the per-image values over the images is that average.

CLIP-T's text is the prompt with the class noun alone: "a dog in the jungle" for "a sks dog in the jungle". The
identifier is a rare token chosen to mean nothing to a text encoder, and the one trained to mean the subject is the
personalised model's, not CLIP's: with the class noun, every method, personalised or not, is scored on the same
text. (DreamBooth's "prompt fidelity" is stated for the prompt; which form of it was embedded is not said there.)
"""

from __future__ import annotations

import torch
from PIL import Image

from .dataset import Subject
from .encoders import MetricEncoders


def cosine_similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] cosine similarities of the rows of a [N, D] and b [M, D]."""
    return torch.nn.functional.normalize(a.double(), dim=-1) @ torch.nn.functional.normalize(b.double(), dim=-1).T


def mean_similarity(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """[N]: each generated embedding's mean cosine similarity to all reference embeddings [R, D]."""
    return cosine_similarities(generated, references).mean(dim=1)


class DreamBenchScorer:
    """Scores images of DreamBench subjects; each subject's photos and each text are embedded once."""

    def __init__(self, encoders: MetricEncoders):
        self.encoders = encoders
        self._photos: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._texts: dict[str, torch.Tensor] = {}

    def photo_embeddings(self, subject: Subject) -> tuple[torch.Tensor, torch.Tensor]:
        """(DINO [R, 384], CLIP [R, 512]) of all the subject's real photos."""
        if subject.name not in self._photos:
            photos = []
            for path in subject.images:
                with Image.open(path) as photo:
                    photos.append(photo.convert("RGB"))
            self._photos[subject.name] = (self.encoders.dino_embeddings(photos), self.encoders.clip_image_embeddings(photos))
        return self._photos[subject.name]

    def text_embedding(self, text: str) -> torch.Tensor:
        if text not in self._texts:
            self._texts[text] = self.encoders.clip_text_embeddings([text])
        return self._texts[text]

    def score(self, image: Image.Image, subject: Subject, clip_t_text: str) -> dict[str, float]:
        dino_photos, clip_photos = self.photo_embeddings(subject)
        clip_image = self.encoders.clip_image_embeddings([image])
        return {
            "dino": float(mean_similarity(self.encoders.dino_embeddings([image]), dino_photos)[0]),
            "clip_i": float(mean_similarity(clip_image, clip_photos)[0]),
            "clip_t": float(cosine_similarities(clip_image, self.text_embedding(clip_t_text))[0, 0]),
        }
