"""The toy world: captioned 128 x 128 pictures of one subject in a scene, with exact ground truth.

A subject is a class (its silhouette) with identity attributes a class-noun prompt leaves free: body colour,
surface pattern and pattern colour. A scene is a background of sky and ground colours. Placement is random
unless a layout word ("on the left", "at the top", "small", "large") fixes it. Captions name any subset of
the attributes, so a model trained on them learns to sample what is left unsaid.

Everything is drawn with numpy from a seed: the same seed gives the same picture, caption and truth.
The colours are chosen apart from each other and from every scene, so that the judge (judge.py) can read
a picture back by the same rules.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SIZE = 128
HORIZON = 72  # sky above this row, ground below

CLASSES = ("ball", "cube", "star", "mug")
BODY_COLOURS = {"red": (215, 35, 35), "blue": (35, 65, 215), "yellow": (235, 215, 25), "purple": (135, 40, 175)}
PATTERNS = ("solid", "stripes", "dots", "checks")
PATTERN_COLOURS = {"white": (250, 250, 250), "black": (15, 15, 15)}
# scene -> (sky, ground): distinct from each other and from every body colour.
SCENES = {
    "on the beach": ((120, 200, 240), (240, 220, 170)),
    "in the snow": ((175, 185, 200), (245, 248, 252)),
    "on the grass": ((120, 200, 240), (60, 145, 55)),
    "at night": ((12, 18, 48), (40, 36, 52)),
    "in the desert": ((250, 225, 160), (205, 135, 70)),
}
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom")
SIZES = {"small": (26, 34), "large": (58, 70)}
DEFAULT_SIZE = (38, 54)
PATTERN_PERIOD = 16


@dataclasses.dataclass(frozen=True)
class Subject:
    """Who the subject is: what a reference image fixes and a class-noun prompt leaves free."""

    cls: str
    body: str
    pattern: str
    pattern_colour: str

    def identity(self) -> tuple[str, str, str]:
        """The attributes identity is scored on; a solid subject has no pattern colour."""
        return (self.body, self.pattern, self.pattern_colour if self.pattern != "solid" else "-")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture's truth: subject, scene, layout words and the subject's box (x0, y0, x1, y1), end exclusive."""

    subject: Subject
    scene: str
    position: str | None
    size_word: str | None
    box: tuple[int, int, int, int]


def random_subject(rng: np.random.Generator, cls: str | None = None) -> Subject:
    return Subject(cls or str(rng.choice(CLASSES)), str(rng.choice(list(BODY_COLOURS))), str(rng.choice(PATTERNS)),
                   str(rng.choice(list(PATTERN_COLOURS))))


def place(rng: np.random.Generator, position: str | None, size_word: str | None) -> tuple[int, int, int, int]:
    """A square box for the subject obeying the layout words (left/right: centre in the outer third, top/bottom
    likewise, small/large: side range), anywhere inside the picture otherwise."""
    low, high = SIZES.get(size_word, DEFAULT_SIZE) if size_word else (26, 70)
    side = int(rng.integers(low, high + 1))
    margin = 4
    def centre(lo_frac: float, hi_frac: float) -> int:
        lo = max(margin + side // 2, int(lo_frac * SIZE))
        hi = min(SIZE - margin - side + side // 2, int(hi_frac * SIZE))
        return int(rng.integers(lo, max(lo, hi) + 1))
    cx = centre(0.0, 0.30) if position == "on the left" else centre(0.70, 1.0) if position == "on the right" else centre(0.0, 1.0)
    cy = centre(0.0, 0.30) if position == "at the top" else centre(0.70, 1.0) if position == "at the bottom" else centre(0.0, 1.0)
    x0, y0 = cx - side // 2, cy - side // 2
    return (x0, y0, x0 + side, y0 + side)


def silhouette(cls: str, side: int) -> np.ndarray:
    """Boolean mask [side, side] of the class's shape filling its box."""
    yy, xx = (np.mgrid[0:side, 0:side] + 0.5) / side - 0.5
    if cls == "ball":
        return xx**2 + yy**2 <= 0.25
    if cls == "cube":
        return np.ones((side, side), dtype=bool)
    if cls == "star":
        angle = np.arctan2(yy, xx) + math.pi / 2
        radius = np.hypot(xx, yy)
        # a five-pointed star: radius between the inner and outer vertex following the angle
        phase = np.abs(((angle * 5 / (2 * math.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between
        return radius <= 0.2 + 0.3 * phase**1.5
    if cls == "mug":
        body = (np.abs(xx + 0.1) <= 0.32) & (np.abs(yy) <= 0.42)
        ring = np.hypot(xx - 0.27, yy) 
        handle = (ring >= 0.1) & (ring <= 0.2) & (xx >= 0.22)
        return body | handle
    raise ValueError(f"unknown class {cls!r}; the classes are {CLASSES}")


def pattern_mask(pattern: str, side: int) -> np.ndarray:
    """Where the pattern colour goes, in box coordinates [side, side]."""
    yy, xx = np.mgrid[0:side, 0:side]
    if pattern == "solid":
        return np.zeros((side, side), dtype=bool)
    if pattern == "stripes":
        return (yy // (PATTERN_PERIOD // 2)) % 2 == 1
    if pattern == "checks":
        return ((yy // (PATTERN_PERIOD // 2)) + (xx // (PATTERN_PERIOD // 2))) % 2 == 1
    if pattern == "dots":
        cy = (yy % PATTERN_PERIOD) - PATTERN_PERIOD / 2 + 0.5
        cx = (xx % PATTERN_PERIOD) - PATTERN_PERIOD / 2 + 0.5
        return cx**2 + cy**2 <= 16
    raise ValueError(f"unknown pattern {pattern!r}; the patterns are {PATTERNS}")


def background(scene: str, rng: np.random.Generator) -> np.ndarray:
    sky, ground = SCENES[scene]
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:HORIZON] = sky
    image[HORIZON:] = ground
    image += rng.normal(0, 4, image.shape)  # texture that carries no meaning
    if scene == "at night":  # a few stars in the sky
        for _ in range(int(rng.integers(6, 12))):
            y, x = int(rng.integers(2, HORIZON - 3)), int(rng.integers(2, SIZE - 3))
            image[y:y + 2, x:x + 2] = (250, 250, 210)
    return image


def subject_mask(truth: Scene) -> np.ndarray:
    """The subject's pixels, bool [128, 128]: its class's silhouette in its box (as render draws it)."""
    x0, y0, x1, y1 = truth.box
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0:y1, x0:x1] = silhouette(truth.subject.cls, x1 - x0)
    return mask


def render(truth: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [128, 128, 3], subject mask bool [128, 128])."""
    image = background(truth.scene, rng)
    x0, y0, x1, y1 = truth.box
    side = x1 - x0
    shape = silhouette(truth.subject.cls, side)
    marks = pattern_mask(truth.subject.pattern, side) & shape
    patch = np.where(marks[..., None], PATTERN_COLOURS[truth.subject.pattern_colour], BODY_COLOURS[truth.subject.body])
    region = image[y0:y1, x0:x1]
    region[shape] = patch[shape]
    return np.clip(image, 0, 255).round().astype(np.uint8), subject_mask(truth)


def caption(truth: Scene, rng: np.random.Generator | None, name: str | None = None, keep: float = 0.5) -> str:
    """A caption naming the class (or `name`, e.g. "sks ball"), the scene, the layout words that were used to place
    the subject, and each identity attribute with probability `keep` (all of them when rng is None)."""
    subject = truth.subject
    said = (lambda: True) if rng is None else (lambda: bool(rng.random() < keep))
    words = ["a"]
    if truth.size_word:
        words.append(truth.size_word)
    if name is None and said():
        words.append(subject.body)
    words.append(name or subject.cls)
    if name is None and subject.pattern != "solid" and said():
        words.append(f"with {subject.pattern_colour} {subject.pattern}" if said() else f"with {subject.pattern}")
    elif name is None and subject.pattern == "solid" and said():
        words.insert(-1, "plain")
    words.append(truth.scene)
    if truth.position:
        words.append(truth.position)
    return " ".join(words)


def sample(seed: int, subject: Subject | None = None, scene: str | None = None, position: str | None = "random",
           size_word: str | None = "random") -> tuple[np.ndarray, np.ndarray, Scene]:
    """One picture of the world from `seed`: (image, mask, truth). Unset choices are drawn; layout words are
    used with probability 1/2 each unless given (None: no layout word)."""
    rng = np.random.default_rng(seed)
    subject = subject or random_subject(rng)
    scene = scene or str(rng.choice(list(SCENES)))
    if position == "random":
        position = str(rng.choice(POSITIONS)) if rng.random() < 0.5 else None
    if size_word == "random":
        size_word = str(rng.choice(list(SIZES))) if rng.random() < 0.5 else None
    truth = Scene(subject, scene, position, size_word, place(rng, position, size_word))
    image, mask = render(truth, rng)
    return image, mask, truth


def dataset(count: int, seed: int = 0):
    """`count` training pictures with captions: yields (image uint8 [128,128,3], caption, truth). About one
    caption in ten is empty, so that classifier-free guidance has an unconditional model."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, _, truth = sample(int(rng.integers(2**62)) ^ index)
        text = "" if rng.random() < 0.1 else caption(truth, rng)
        yield image, text, truth
