"""The toy world's judge: reads a picture back by the world's own pixel rules (world.py), with no network.

    reading = read(image)          # image: uint8 [128, 128, 3] (or float in 0..1)
    reading.cls, reading.scene, reading.identity(), reading.box, reading.position_words(), reading.size_word()

It knows nothing of how the picture was made (training data, a guided or unguided sample), and its rules are
tolerant, so that the blur and colour noise of a small VAE + diffusion model do not change what it reads
(judge_accuracy.py measures both):

* scene: the nearest SCENES (sky, ground) pair to the median colours of the top and bottom rows;
* background: each row's colour is its region's, the sky's or the ground's: the median of the medians of that
  region's pure rows (most of their pixels near their median, so no subject fills half of them) that lie near
  the colour of the picture's top or bottom rows (an autoencoder can shade the frame, so not those rows' own
  colour); then each row's own median outside the subject;
* subject: on a 3 x 3 mean of the picture (specks such as the night's stars painted over first), the pixels
  far (> FAR) from their row's background. Its core is the largest group of pieces that are very far (> CORE)
  within 2 * GROUP px of each other, found again with the bar raised to the background's own variation away from
  the core where that is higher (an overfitted model repeats the world's checks faintly over the background);
  the subject is the core, the far pixels beyond that variation that a path of at most GROW such pixels joins to
  it (blurred edges, a mug's thin handle), and the far pixels in its holes. Where a pattern colour is the
  background's own (white on the snow, black at night) the pattern's pixels cannot be told from the background:
  background-coloured pixels inside the subject's closing count as subject, and as pattern of that colour, when
  there are enough of them to be a pattern (AMBIGUOUS_FRACTION of the subject) rather than a star's notches;
* class: the class whose silhouette (world.silhouette itself, holes filled) overlaps the mask best, by
  intersection over union at the best position and size; blur and a stray piece beside the subject change
  that overlap a little, where they would move the mask's box, and any feature measured in it, a lot;
* body colour: the BODY_COLOURS colour whose colour segment to the pattern colour passes nearest the subject's
  inner pixels (blurred mixes of body and pattern lie on it);
* pattern: pixels on the pattern's half of that segment are pattern; solid below SOLID_SHARE of them, else by
  whether a pattern pixel's partner half a period (world.PATTERN_PERIOD / 2) away is pattern too: along the
  rows for stripes, on the diagonals for checks, neither for dots; pattern colour: white or black, by the
  majority of the pixels nearest either.

A field is None where the picture does not show it: all but the scene without a subject, the colours and
pattern without a body pixel, the pattern colour of a solid subject.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

try:
    from . import world
except ImportError:  # imported as a top-level module, with this folder on sys.path
    import world

SIZE = world.SIZE
FAR = 30.0  # RGB distance from the row's background above which a pixel is the subject's (black on the night sky: 33)
CORE = 60.0  # ... above which it can be the subject's core (the nearest body colour to a scene's: 96, yellow on the
#               desert's sky)
AWAY, HAZE_PERCENTILE = 12, 99  # the background's variation: this percentile of the distance this many px from the core
GROW = 4  # far pixels that a path of far pixels this long joins to the subject's core are its edges and thin parts
REGION_NEAR = 70.0  # row medians this near the edge rows' colour can be the region's background
PURE_NEAR, PURE_SHARE = 40.0, 0.6  # a row is pure when this share of its pixels is this near its median
SPECK = 25  # very far pieces smaller than this (after the smoothing) join the subject only inside its holes
GROUP = 5  # pieces within 2 * GROUP px of each other are one subject (stripes hidden in the background)
EDGE = 2  # gaps of up to 2 * EDGE px inside the subject are blurred edges, not background
INSET = 1  # colours are read this many px inside the subject's outline
SEGMENT_NEAR = 60.0  # pixels this near the body-to-pattern colour segment are read as body or pattern
OUTLINE = 3  # px from the outline where mixes of body and background are looked for
FIT_CANVAS = 256  # the silhouette fit correlates on a canvas this wide (twice the picture: no wrap-around)
FIT_AREA = 1.5  # silhouettes whose area is within this factor of the mask's are fitted
SPECK_RAW = 12  # far pieces of at most this many px in the picture itself are specks
STAR_COLOUR = (250, 250, 210)  # world.background's stars at night
STAR_NEAR = 20.0  # pixels this near the star colour in the sky are stars (white is 40 from it)
MIN_AREA = 40  # fewer subject pixels than this: no subject
SEAM = 4  # vertical runs of far pixels this short near the horizon are its seam (an autoencoder's blurred edge)
SEAM_BAND = 8  # rows either side of the horizon where the seam is looked for
BORDER = 3  # px of the picture's frame never read as the subject (world.place keeps it 4 px inside)
AMBIGUOUS_NEAR = 70.0  # a pattern colour this near a row's background can hide in it
AMBIGUOUS_FRACTION = 0.12  # hidden pattern pixels, as a share of the seen subject, that make a pattern
SOLID_SHARE = 0.04  # below this share of pattern-coloured pixels the subject is solid
MIN_PAIRS = 40  # pattern pixels with a partner half a period away needed to read the pattern by its partners
PARTNERED = 0.4  # share of partners that are also pattern that makes stripes (along) or checks (diagonal)
DOTS_SHARE = 0.31  # without partners: a pattern share below this is dots, above it checks
# Layout words, slightly more tolerant than world.place (0.30 / 0.70 of the picture, sides 26-34 / 58-70).
LEFT_TOP, RIGHT_BOTTOM = 0.35, 0.65
SMALL_MAX, LARGE_MIN = 40, 52

_BODY_NAMES = tuple(world.BODY_COLOURS)
_PATTERN_NAMES = tuple(world.PATTERN_COLOURS)
_PROTOTYPES = np.array([*world.BODY_COLOURS.values(), *world.PATTERN_COLOURS.values()], dtype=np.float32)
_SCENE_NAMES = tuple(world.SCENES)
_SCENE_COLOURS = np.array(list(world.SCENES.values()), dtype=np.float32)  # [scene, sky/ground, rgb]


@dataclasses.dataclass(frozen=True)
class Reading:
    """What the judge read in one picture; box is (x0, y0, x1, y1), end exclusive, of the subject's mask."""

    cls: str | None
    scene: str | None
    body: str | None
    pattern: str | None
    pattern_colour: str | None
    box: tuple[int, int, int, int] | None
    mask: np.ndarray = dataclasses.field(compare=False, repr=False)  # bool [128, 128]
    side: float | None = None  # the world's square box side that the mask's box implies for the class read
    evidence: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # features, for debugging

    def identity(self) -> tuple:
        """(body, pattern, pattern colour or '-' for a solid subject), as world.Subject.identity."""
        return (self.body, self.pattern, "-" if self.pattern == "solid" else self.pattern_colour)

    def position_words(self) -> set[str]:
        """The words of world.POSITIONS that the box centre satisfies (thresholds LEFT_TOP / RIGHT_BOTTOM)."""
        if self.box is None:
            return set()
        x0, y0, x1, y1 = self.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        words = set()
        if cx < LEFT_TOP * SIZE:
            words.add("on the left")
        if cx > RIGHT_BOTTOM * SIZE:
            words.add("on the right")
        if cy < LEFT_TOP * SIZE:
            words.add("at the top")
        if cy > RIGHT_BOTTOM * SIZE:
            words.add("at the bottom")
        return words

    def size_word(self) -> str | None:
        """'small' or 'large' by the world's box side (the mask's box scaled by its class's extent in the world's
        square box: a mug fills 0.89 x 0.84 of it), None in between or without a subject."""
        if self.box is None:
            return None
        x0, y0, x1, y1 = self.box
        side = self.side if self.side is not None else max(x1 - x0, y1 - y0)
        if side <= SMALL_MAX:
            return "small"
        if side >= LARGE_MIN:
            return "large"
        return None


# --- numpy image helpers -----------------------------------------------------------------------------------

def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.shape != (SIZE, SIZE, 3):
        raise ValueError(f"expected an RGB picture [{SIZE}, {SIZE}, 3], got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0
    return image.astype(np.float32)


def _mean3(image: np.ndarray) -> np.ndarray:
    """3 x 3 mean with the edges repeated."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    total = np.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            total += padded[dy:dy + SIZE, dx:dx + SIZE]
    return total / 9.0


def _disk(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius + radius]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    h, w = mask.shape
    padded = np.pad(mask, radius, constant_values=False)
    out = np.zeros_like(mask)
    for dy, dx in _disk(radius):
        out |= padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing with a disk, as on an unbounded canvas: it fills gaps and bays narrower than
    2 * radius, and neither joins a subject to the picture's edge nor eats one that the edge cuts."""
    padded = _dilate(np.pad(mask, radius, constant_values=False), radius)
    h, w = padded.shape
    edge = np.pad(padded, radius, mode="edge")
    out = np.ones_like(padded)
    for dy, dx in _disk(radius):
        out &= edge[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out[radius:-radius, radius:-radius]


def _reach(seed: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """The seed and the pixels of `allowed` that a 4-connected path through `allowed` reaches from it in at most
    `steps` steps."""
    out = seed.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown &= allowed | seed
        if np.array_equal(grown, out):
            break
        out = grown
    return out


def _holes(mask: np.ndarray) -> np.ndarray:
    """The pixels outside the mask that the outside of the picture cannot reach without crossing it."""
    gaps, _ = label(~mask)
    border = np.unique(np.concatenate([gaps[0], gaps[-1], gaps[:, 0], gaps[:, -1]]))
    return ~mask & ~np.isin(gaps, border[border > 0])


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components: (labels int [h, w], 0 outside the mask and 1..count inside, count)."""
    h, w = mask.shape
    sentinel = h * w
    flat_index = np.arange(h * w, dtype=np.int64).reshape(h, w)
    labels = np.where(mask, flat_index, sentinel)
    while True:
        low = labels.copy()
        np.minimum(low[1:], labels[:-1], out=low[1:])
        np.minimum(low[:-1], labels[1:], out=low[:-1])
        np.minimum(low[:, 1:], labels[:, :-1], out=low[:, 1:])
        np.minimum(low[:, :-1], labels[:, 1:], out=low[:, :-1])
        low = np.where(mask, low, sentinel)
        # pointer jumping: follow each label to its own label, so that long chains collapse quickly
        extended = np.append(low.ravel(), sentinel)
        for _ in range(4):
            low = np.where(mask, extended[low], sentinel)
            extended = np.append(low.ravel(), sentinel)
        if np.array_equal(low, labels):
            break
        labels = low
    roots, dense = np.unique(labels[mask], return_inverse=True)
    out = np.zeros((h, w), dtype=np.int32)
    out[mask] = dense.reshape(-1) + 1
    return out, len(roots)


def _nearest(colours: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    return np.argmin(np.linalg.norm(colours[..., None, :] - prototypes, axis=-1), axis=-1)


def _distance_to_segment(pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel [h, w, 3] distance to the colour segment from a[y] to b[y] ([h, 3] each)."""
    a, b = a[:, None, :], b[:, None, :]
    span = b - a
    length2 = np.maximum((span * span).sum(-1, keepdims=True), 1e-6)
    t = np.clip(((pixels - a) * span).sum(-1, keepdims=True) / length2, 0.0, 1.0)
    return np.linalg.norm(pixels - a - t * span, axis=-1)


# --- shape of the classes ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def class_prototypes() -> tuple[np.ndarray, np.ndarray]:
    """Per class, over the world's sides: the share of its square box that world.silhouette fills, and the share
    of that box its mask's box spans (the larger of width and height)."""
    fills, extents = [], []
    for cls in world.CLASSES:
        sides = range(26, 71, 4)
        masks = [world.silhouette(cls, side) for side in sides]
        fills.append(np.mean([m.mean() for m in masks]))
        spans = []
        for m, side in zip(masks, sides):
            ys, xs = np.nonzero(m)
            spans.append(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / side)
        extents.append(np.mean(spans))
    return np.array(fills), np.array(extents)


@functools.lru_cache(maxsize=256)  # a few hundred sides are fitted in a run; each spectrum is 256 x 129
def _silhouette_spectrum(cls: str, side: int) -> tuple[np.ndarray, int]:
    """The conjugate spectrum of the class's silhouette of this side (its holes filled, as the subject's mask's
    are), zero-padded to FIT_CANVAS, and its area: correlating it with a mask gives their overlap at every shift."""
    shape = world.silhouette(cls, side)
    shape = shape | _holes_of(shape)
    canvas = np.zeros((FIT_CANVAS, FIT_CANVAS), dtype=np.float32)
    canvas[:side, :side] = shape
    return np.conj(np.fft.rfft2(canvas)), int(shape.sum())


def _holes_of(shape: np.ndarray) -> np.ndarray:
    """_holes for a small mask (padded by a pixel, so that a silhouette touching its box's edge keeps its holes)."""
    padded = np.pad(shape, 1)
    return _holes(padded)[1:-1, 1:-1]


def silhouette_fits(mask: np.ndarray) -> dict[str, tuple[float, int]]:
    """Per class: the best intersection over union of the mask with that class's silhouette (world.silhouette,
    holes filled) at any position and at sides whose silhouette area is within FIT_AREA of the mask's, and the
    side that gives it. A blur that rounds a cube's corners or a stray piece beside the subject moves this little;
    it moves the mask's box, and with it any box-relative feature, a lot."""
    area = float(mask.sum())
    canvas = np.zeros((FIT_CANVAS, FIT_CANVAS), dtype=np.float32)
    canvas[:mask.shape[0], :mask.shape[1]] = mask
    spectrum = np.fft.rfft2(canvas)
    fits = {}
    for cls, fill in zip(world.CLASSES, class_prototypes()[0]):
        best = (0.0, 0)
        centre = math.sqrt(area / fill)
        low = min(SIZE, max(8, int(centre / math.sqrt(FIT_AREA))))  # a mask wider than any subject: the widest
        for side in range(low, max(low, min(SIZE, int(centre * math.sqrt(FIT_AREA)))) + 1):
            other, other_area = _silhouette_spectrum(cls, side)
            overlap = float(np.fft.irfft2(spectrum * other, s=canvas.shape).max())
            iou = overlap / (area + other_area - overlap)
            if iou > best[0]:
                best = (iou, side)
        fits[cls] = best
    return fits


def _read_class(mask: np.ndarray, fits: dict[str, tuple[float, int]]) -> tuple[str, float]:
    """The class whose silhouette fits the mask best (`fits`: silhouette_fits(mask)), and the world's box side that
    the mask's box implies for it (the mask's longer span over the class's extent in its box)."""
    cls = max(fits, key=lambda name: fits[name][0])
    ys, xs = np.nonzero(mask)
    span = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    return cls, float(span / class_prototypes()[1][world.CLASSES.index(cls)])


# --- pattern ------------------------------------------------------------------------------------------------

def pattern_features(marks: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Features of the pattern pixels `marks` within the pixels read, `region`:

    share: the share of the region that is pattern;
    row_purity, column_purity: a line's mixing is r (1 - r) for its share r of pattern; purity is
        1 - (mean line mixing) / (the region's mixing): 1 when every line is all pattern or all body (stripes
        along it), 0 when lines are as mixed as the whole;
    row_fill, column_fill: the mean share r of the lines, weighted by their pattern pixels: near 1 for stripes
        along the lines, near 1/2 for checks and less for dots;
    along, diagonal: how often a pattern pixel's partner half a period (world.PATTERN_PERIOD / 2) away is also
        pattern, along the rows and on the diagonals (where both pixels were read): stripes ~1 along, ~0 on the
        diagonals, checks ~0 along and ~1 diagonal, dots ~0 both;
    along_pairs, diagonal_pairs: the number of pattern pixels with a partner read, behind those."""
    total = region.sum()
    share = float(marks[region].sum() / total) if total else 0.0
    mixing = share * (1 - share)

    def lines(axis: int) -> tuple[float, float]:
        count = region.sum(axis=axis)
        hits = (marks & region).sum(axis=axis)
        used = count >= 3
        if not used.any() or mixing < 1e-6:
            return 0.0, 0.0
        r = hits[used] / count[used]
        purity = 1 - (count[used] * r * (1 - r)).sum() / count[used].sum() / mixing
        fill = (hits[used] * r).sum() / max(hits[used].sum(), 1)
        return float(purity), float(fill)

    def partners(shifts: list[tuple[int, int]]) -> tuple[float, int]:
        marked = marks & region
        both, pairs = 0, 0
        for dy, dx in shifts:
            ys = slice(max(0, -dy), SIZE - max(0, dy))
            xs = slice(max(0, -dx), SIZE - max(0, dx))
            ys2 = slice(max(0, dy), SIZE - max(0, -dy))
            xs2 = slice(max(0, dx), SIZE - max(0, -dx))
            here = marked[ys, xs] & region[ys2, xs2]
            pairs += int(here.sum())
            both += int((here & marks[ys2, xs2]).sum())
        return (both / pairs if pairs else 0.0), pairs

    half = world.PATTERN_PERIOD // 2
    (row_purity, row_fill), (column_purity, column_fill) = lines(1), lines(0)
    along, along_pairs = partners([(0, half), (0, -half)])
    diagonal, diagonal_pairs = partners([(half, half), (half, -half), (-half, half), (-half, -half)])
    return {"share": share, "row_purity": row_purity, "column_purity": column_purity, "row_fill": row_fill,
            "column_fill": column_fill, "along": along, "diagonal": diagonal, "along_pairs": along_pairs,
            "diagonal_pairs": diagonal_pairs}


def _read_pattern(f: dict[str, float]) -> str:
    """solid below SOLID_SHARE; then by the half-period partners where there are enough of them (stripes: along,
    checks: diagonal, dots: neither), else by the lines (stripes: pure full rows) and the share (dots: less)."""
    if f["share"] < SOLID_SHARE:
        return "solid"
    if f["along_pairs"] + f["diagonal_pairs"] >= MIN_PAIRS:
        if f["along"] > PARTNERED and f["along"] >= f["diagonal"]:
            return "stripes"
        return "checks" if f["diagonal"] > PARTNERED else "dots"
    if f["row_purity"] > 0.55 and f["row_purity"] - f["column_purity"] > 0.3 and f["row_fill"] > 0.8:
        return "stripes"
    return "dots" if f["share"] < DOTS_SHARE else "checks"


# --- the reader ---------------------------------------------------------------------------------------------

def _empty(scene: str | None) -> Reading:
    return Reading(None, scene, None, None, None, None, np.zeros((SIZE, SIZE), dtype=bool))


def _inside_frame(mask: np.ndarray) -> np.ndarray:
    """The mask without the picture's frame (BORDER px), which holds an autoencoder's edge artefacts, never the
    subject."""
    out = mask.copy()
    out[:BORDER], out[-BORDER:], out[:, :BORDER], out[:, -BORDER:] = False, False, False, False
    return out


def _region_colour(medians: np.ndarray, purity: np.ndarray, rows: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """The background colour of the sky's or the ground's rows: the median of the medians of their pure rows (most
    pixels near the median: no subject fills half of them) near `edge` (the colour of the picture's top or bottom
    rows, where no subject is), or `edge` itself when there are none."""
    usable = rows & (purity >= PURE_SHARE) & (np.linalg.norm(medians - edge, axis=-1) < REGION_NEAR)
    return np.median(medians[usable], axis=0) if usable.any() else edge


def _core(very_far: np.ndarray) -> np.ndarray | None:
    """The largest group of pieces of `very_far` (SPECK px or more) within 2 * GROUP px of each other, or None."""
    pieces, count = label(very_far)
    if count == 0:
        return None
    areas = np.bincount(pieces.ravel(), minlength=count + 1)
    areas[0] = 0
    core = very_far & (areas[pieces] >= SPECK)
    groups, group_count = label(_dilate(core, GROUP))
    if group_count == 0:
        return None
    group_areas = np.bincount(groups[core], minlength=group_count + 1)
    return core & (groups == int(np.argmax(group_areas)))


def _background_level(distance: np.ndarray, core: np.ndarray) -> float:
    """The HAZE_PERCENTILE-th percentile of the distance to the background over the pixels AWAY px or more from
    the core, inside the frame: how far the background itself strays from its row's colour."""
    away = _inside_frame(~_dilate(core, AWAY))
    return float(np.percentile(distance[away], HAZE_PERCENTILE)) if away.sum() >= MIN_AREA else 0.0


def _vertical_runs(mask: np.ndarray) -> np.ndarray:
    """For each pixel of the mask, the length of the vertical run of mask pixels it belongs to (0 off the mask)."""
    down = np.zeros(mask.shape, dtype=np.int32)
    up = np.zeros(mask.shape, dtype=np.int32)
    for y in range(SIZE):
        down[y] = np.where(mask[y], (down[y - 1] if y else 0) + 1, 0)
    for y in range(SIZE - 1, -1, -1):
        up[y] = np.where(mask[y], (up[y + 1] if y < SIZE - 1 else 0) + 1, 0)
    return np.where(mask, down + up - 1, 0)


def _horizon_seam(far: np.ndarray) -> np.ndarray:
    """Far pixels near the horizon in vertical runs of at most SEAM px: the line an autoencoder's blur or shift of the
    sky-ground edge leaves across the picture; a subject is at least 26 px tall there."""
    near = np.zeros(far.shape, dtype=bool)
    near[world.HORIZON - SEAM_BAND:world.HORIZON + SEAM_BAND] = True
    return near & (_vertical_runs(far) <= SEAM)


def read(image: np.ndarray) -> Reading:
    """Read one picture (uint8 [128, 128, 3], or float in 0..1) back by the world's rules."""
    raw = _as_float(image)

    # scene: median colours of the top and bottom rows (the subject stays world.place's margin away from them)
    sky = np.median(raw[:6].reshape(-1, 3), axis=0)
    ground = np.median(raw[-6:].reshape(-1, 3), axis=0)
    scene_distance = (np.linalg.norm(_SCENE_COLOURS[:, 0] - sky, axis=-1)
                      + np.linalg.norm(_SCENE_COLOURS[:, 1] - ground, axis=-1))
    scene = _SCENE_NAMES[int(np.argmin(scene_distance))]

    # each row's background: its region's colour (the sky's or the ground's; an autoencoder can shade the
    # picture's frame, so not the edge rows' own), a colour segment, sky to ground, across the horizon (blur
    # mixes them there)
    rows = np.arange(SIZE)
    in_sky = rows < world.HORIZON
    medians = np.median(raw, axis=1)
    purity = (np.linalg.norm(raw - medians[:, None], axis=-1) < PURE_NEAR).mean(axis=1)
    region = np.where(in_sky[:, None], _region_colour(medians, purity, in_sky, sky),
                      _region_colour(medians, purity, ~in_sky, ground)).astype(np.float32)
    low = region.copy()
    high = low.copy()
    band = (rows >= world.HORIZON - 3) & (rows < world.HORIZON + 3)
    low[band], high[band] = region[0], region[-1]

    # specks (the night's stars: 2 x 2 px) painted over with the background before anything else, so that
    # the smoothing does not spread them into the subject's neighbourhood
    specks, count = label(_distance_to_segment(raw, low, high) > FAR)
    areas = np.bincount(specks.ravel(), minlength=count + 1)
    areas[0] = SPECK_RAW + 1
    speck = areas[specks] <= SPECK_RAW
    # and the night's stars by their colour, also where one touches the subject
    speck |= (np.linalg.norm(raw - STAR_COLOUR, axis=-1) < STAR_NEAR) & (rows < world.HORIZON)[:, None]
    smooth = _mean3(np.where(speck[..., None], low[:, None, :], raw))
    distance = _distance_to_segment(smooth, low, high)

    # second pass: each row's own median outside the first pass's subject (tracks gradients, a moved horizon),
    # or where the first pass found the whole row far (a shaded frame's), its median if the row is pure and near
    # its region's colour
    outside = ~_dilate(distance > FAR, 3)
    counts = outside.sum(axis=1)
    for y in range(SIZE):
        if counts[y] >= 24:
            low[y] = high[y] = np.median(smooth[y][outside[y]], axis=0)
        elif counts[y] == 0 and purity[y] >= PURE_SHARE and np.linalg.norm(medians[y] - region[y]) < REGION_NEAR:
            low[y] = high[y] = medians[y]
    distance = _distance_to_segment(smooth, low, high)

    # the subject: built from very far pieces, leaving out specks (the night's stars) unless they lie in its
    # holes (a pattern's dots cut off from the body by a blurred edge)
    far = distance > FAR
    far &= ~_horizon_seam(far)
    far = _inside_frame(far)
    # the core, then again with the bar raised to the background's own variation away from it (a faint pattern
    # over the background can be very far); its edges: the far pixels beyond that variation that reach it
    seen = _core(far & (distance > CORE))
    if seen is None:
        return _empty(scene)
    level = _background_level(distance, seen)
    if level > CORE:
        seen = _core(far & (distance > level))
        if seen is None:
            return _empty(scene)
    seen = _reach(seen, far & (distance > level), GROW)
    seen |= far & _holes(seen)
    if seen.sum() < MIN_AREA:
        return _empty(scene)

    # pattern pixels hidden in the background (white on snow, black at night): background-coloured pixels
    # inside the subject's closing, in rows whose background is near a pattern colour
    background = low  # after the second pass low == high off the horizon band; near enough within it
    near = np.linalg.norm(background[:, None, :] - _PROTOTYPES[len(_BODY_NAMES):], axis=-1)  # [row, pattern]
    hiding = np.where(near.min(axis=1) < AMBIGUOUS_NEAR, near.argmin(axis=1), -1)  # [row] pattern index or -1
    # blurred edges between body and pattern can mix to a background colour (blue and white to the snow's
    # sky, yellow and white to the desert's): close gaps of up to 2 * EDGE px
    seen_pixels = seen
    seen = _close(seen, EDGE)
    closed = _close(seen, GROUP)
    hidden = closed & ~seen & ~far & (hiding >= 0)[:, None]
    hidden_colour = np.broadcast_to(hiding[:, None], hidden.shape)
    if hidden.sum() < AMBIGUOUS_FRACTION * seen.sum():
        hidden = np.zeros_like(hidden)

    # the subject's mask: all that the background outside it does not reach (the blurred edges inside it, the
    # handle's hole), and its box
    mask = seen_pixels | hidden
    mask |= _holes(mask)
    exterior = ~mask
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    fits = silhouette_fits(mask)
    cls, side = _read_class(mask, fits)

    # colours: each of the mask's pixels is nearest a body colour, a pattern colour or its row's background
    # (a blurred edge's mix with the background, the handle's hole: neither body nor pattern), hidden
    # pattern pixels are pattern; the pixels next to the background outside the subject are left out (blurred
    # edges mixed with it)
    inner = mask & ~_dilate(exterior, INSET)
    if inner.sum() < 0.3 * mask.sum():
        inner = mask
    bodies = len(_BODY_NAMES)
    to_prototype = np.linalg.norm(raw[..., None, :] - _PROTOTYPES, axis=-1)  # [h, w, colour]
    nearest = to_prototype.argmin(axis=-1)
    to_background = np.linalg.norm(raw - background[:, None, :], axis=-1)
    visible = inner & (to_background >= to_prototype.min(axis=-1)) & ~hidden
    if (visible & (nearest < bodies)).sum() < 4:
        return Reading(cls, scene, None, None, None, box, mask, side, {"hidden": int(hidden.sum())})
    votes = np.array([(visible & (nearest == bodies + k)).sum() + (hidden & (hidden_colour == k)).sum()
                      for k in range(len(_PATTERN_NAMES))])
    pattern_index = int(votes.argmax())
    mark_colour = _PROTOTYPES[bodies + pattern_index]
    # the body colour whose segment to the pattern colour passes nearest the subject's pixels: blur mixes body
    # and pattern (red and white to pink), and the mixes of a small patterned subject outnumber its pure body
    pixels = raw[visible]
    misfit = [np.minimum(_distance_to_segment(pixels[None], colour[None], mark_colour[None]), SEGMENT_NEAR).sum()
              for colour in _PROTOTYPES[:bodies]]
    body_read = int(np.argmin(misfit))
    body, body_colour = _BODY_NAMES[body_read], _PROTOTYPES[body_read]
    # pattern or body by the side of the body-to-pattern colour segment a pixel lies on: blurred mixes of the
    # two split at their middle, as the sharp picture did; pixels far from the segment (mixes with another
    # colour) count as neither
    span = mark_colour - body_colour
    t = ((raw - body_colour) @ span) / max(float(span @ span), 1e-6)
    off = np.linalg.norm(raw - body_colour - np.clip(t, 0, 1)[..., None] * span, axis=-1)
    counted = inner & ~hidden & (off < np.minimum(SEGMENT_NEAR, to_background))
    # near the outline, a pixel on the pattern's side that may as well be a mix of body and background is
    # neither (where the background is near the pattern colour, as the snow and white, the two mixes look alike)
    background_mix = _distance_to_segment(raw, np.broadcast_to(body_colour, background.shape), background)
    counted &= ~(_dilate(exterior, OUTLINE) & (t > 0.5) & (background_mix <= off + 10))
    counted |= hidden
    is_pattern = counted & ((t > 0.5) | hidden)
    features = pattern_features(is_pattern, counted)
    pattern = _read_pattern(features)
    pattern_colour = None if pattern == "solid" else _PATTERN_NAMES[pattern_index]
    evidence = {"fits": {name: round(iou, 3) for name, (iou, _) in fits.items()},
                "pattern": {k: round(float(v), 3) for k, v in features.items()},
                "hidden": int(hidden.sum()), "seen": int(seen.sum())}
    return Reading(cls, scene, body, pattern, pattern_colour, box, mask, side, evidence)
