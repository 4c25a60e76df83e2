"""The toy world's judge (tests/evaluation/toy_world/judge.py) reads the world's pictures back by its rules.

Held-out pictures are read right per field; hand-built pictures of every class and pattern are read exactly;
a picture without a subject has none; recolouring the subject changes only its body colour; blur and colour
noise (judge_accuracy.degrade, a stand-in for a VAE round trip) keep the class and the scene; a faint pattern
over the background (judge_accuracy.add_artefacts) stays out of the subject.
The toy_world folder is imported as a package of that name from its path, not through sys.path.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from conftest import toy_world_module

@pytest.fixture(scope="module")
def world():
    return toy_world_module("world")


@pytest.fixture(scope="module")
def judge():
    return toy_world_module("judge")


@pytest.fixture(scope="module")
def accuracy_tool():
    return toy_world_module("judge_accuracy")


def _hand_built(world):
    """(truth, image, mask) for every class x pattern: colours, scenes, sizes and places varied over the set."""
    bodies, colours, scenes = list(world.BODY_COLOURS), list(world.PATTERN_COLOURS), list(world.SCENES)
    cases = []
    for i, (cls, pattern) in enumerate(itertools.product(world.CLASSES, world.PATTERNS)):
        subject = world.Subject(cls, bodies[(i + i // 4) % 4], pattern, colours[(i // 2) % 2])
        side = (30, 46, 64)[i % 3]
        low, high = 4 + side // 2, world.SIZE - 4 - side + side // 2  # world.place's margin
        cx, cy = (int(np.clip(30 + 17 * (i % 5), low, high)), int(np.clip(34 + 13 * (i % 4), low, high)))
        box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
        truth = world.Scene(subject, scenes[i % 5], None, None, box)
        image, mask = world.render(truth, np.random.default_rng(100 + i))
        cases.append((truth, image, mask))
    return cases


def test_held_out_pictures_are_read_right_per_field(accuracy_tool):
    result = accuracy_tool.accuracy(60, seed=777)
    assert result["n"]["cls"] == 60 and result["n"]["position"] > 0 and result["n"]["size"] > 0
    low = {field: value for field, value in result["accuracy"].items() if value < 0.97}
    assert not low, f"fields read right in fewer than 97% of 60 held-out pictures: {low}"


def test_hand_built_pictures_of_every_class_and_pattern_are_read_exactly(world, judge, accuracy_tool):
    for truth, image, mask in _hand_built(world):
        reading = judge.read(image)
        got = (reading.cls, reading.scene, reading.identity())
        want = (truth.subject.cls, truth.scene, truth.subject.identity())
        assert got == want, f"{truth}: read {got}"
        assert accuracy_tool.iou(reading.box, truth.box) >= 0.7, (truth, reading.box)
        assert (reading.mask & mask).sum() / (reading.mask | mask).sum() >= 0.7, truth
        side = truth.box[2] - truth.box[0]
        assert reading.size_word() == {30: "small", 46: None, 64: "large"}[side], (truth, reading.side)


def test_position_words_follow_the_box_centre(world, judge):
    subject = world.Subject("cube", "red", "solid", "white")
    for position in world.POSITIONS:
        truth = world.Scene(subject, "on the grass", position, "small", world.place(np.random.default_rng(5), position, "small"))
        image, _ = world.render(truth, np.random.default_rng(6))
        words = judge.read(image).position_words()
        assert position in words, (position, truth.box, words)
        opposite = {"on the left": "on the right", "on the right": "on the left", "at the top": "at the bottom",
                    "at the bottom": "at the top"}[position]
        assert opposite not in words


@pytest.mark.parametrize("scene", ["on the beach", "in the snow", "on the grass", "at night", "in the desert"])
def test_a_picture_without_a_subject_has_none(world, judge, scene):
    image = np.clip(world.background(scene, np.random.default_rng(3)), 0, 255).round().astype(np.uint8)
    reading = judge.read(image)
    assert reading.scene == scene
    assert reading.cls is None and reading.box is None and reading.body is None and reading.pattern is None
    assert not reading.mask.any()
    assert reading.position_words() == set() and reading.size_word() is None


def test_recolouring_the_subject_changes_only_its_body(world, judge):
    for truth, _, _ in _hand_built(world)[::3]:
        readings = {}
        for body in world.BODY_COLOURS:
            recoloured = dataclasses.replace(truth, subject=dataclasses.replace(truth.subject, body=body))
            image, _ = world.render(recoloured, np.random.default_rng(42))
            readings[body] = judge.read(image)
        assert {body: r.body for body, r in readings.items()} == {body: body for body in world.BODY_COLOURS}
        others = {(r.cls, r.scene, r.pattern, r.pattern_colour) for r in readings.values()}
        assert len(others) == 1, f"{truth}: {others}"
        # the outline's blurred pixels depend on the body's contrast with the background: a point's tip may
        # come and go, so the box may move by a pixel
        boxes = np.array([r.box for r in readings.values()])
        assert (boxes.max(axis=0) - boxes.min(axis=0)).max() <= 1, f"{truth}: {boxes}"


def test_degrading_a_picture_keeps_its_class_and_scene(world, judge, accuracy_tool):
    for i, (truth, image, _) in enumerate(_hand_built(world)):
        degraded = accuracy_tool.degrade(image, np.random.default_rng(i))
        assert np.abs(degraded.astype(int) - image).mean() > 3  # it did degrade
        clean, blurred = judge.read(image), judge.read(degraded)
        assert (blurred.cls, blurred.scene) == (clean.cls, clean.scene) == (truth.subject.cls, truth.scene), truth
        assert accuracy_tool.iou(blurred.box, clean.box) >= 0.7


def test_a_faint_pattern_over_the_background_stays_out_of_the_subject(accuracy_tool):
    """The toy UNet leaves a faint copy of the world's checks on its backgrounds and shades the frame
    (judge_accuracy.add_artefacts, after degrade): the subject's box stays the subject's, so its size and place
    are read as without them."""
    result = accuracy_tool.accuracy(60, seed=777, blur=True, artefacts=True)["accuracy"]
    low = {field: result[field] for field in ("scene", "body", "box", "position", "size") if result[field] < 0.9}
    assert not low, f"fields read right in fewer than 90% of 60 held-out pictures with the artefacts: {low}"


def test_float_pictures_read_as_their_bytes(world, judge):
    image, _, _ = world.sample(2024)
    as_bytes, as_floats = judge.read(image), judge.read(image.astype(np.float32) / 255)
    assert as_floats == as_bytes  # Reading compares every field but its mask and evidence
    assert np.array_equal(as_floats.mask, as_bytes.mask)
    with pytest.raises(ValueError):
        judge.read(image[:64])


def test_label_finds_4_connected_components(judge):
    mask = np.zeros((6, 7), dtype=bool)
    mask[0, 0:3] = True  # a bar
    mask[1, 2] = mask[2, 2] = True  # joined to it below its end
    mask[3, 3] = True  # only diagonal to it: a component of its own
    mask[5, 0:7] = True  # a row
    labels, count = judge.label(mask)
    assert count == 3
    assert len({labels[0, 0], labels[2, 2]}) == 1 and labels[3, 3] not in (labels[0, 0], labels[5, 0])
    assert (labels > 0).sum() == mask.sum() and not labels[~mask].any()


def _placed(world, cls, side, x0, y0):
    mask = np.zeros((world.SIZE, world.SIZE), dtype=bool)
    mask[y0:y0 + side, x0:x0 + side] = world.silhouette(cls, side)
    return mask


def test_the_silhouette_fit_matches_a_direct_correlation(world, judge):
    """silhouette_fits correlates in the frequency domain; a direct convolution (torch's) over every shift and
    fitted side must find the same best intersection over union."""
    import torch

    mask = _placed(world, "mug", 44, 30, 50) | _placed(world, "cube", 8, 90, 20)  # a subject and a stray piece
    mask |= judge._holes(mask)
    fits = judge.silhouette_fits(mask)
    area = mask.sum()
    for cls, (iou, side) in fits.items():
        best = 0.0
        fill = judge.class_prototypes()[0][world.CLASSES.index(cls)]
        centre = (area / fill) ** 0.5
        for candidate in range(max(8, int(centre / judge.FIT_AREA ** 0.5)),
                               min(world.SIZE, int(centre * judge.FIT_AREA ** 0.5)) + 1):
            shape = world.silhouette(cls, candidate)
            shape = shape | judge._holes_of(shape)
            overlap = torch.nn.functional.conv2d(torch.from_numpy(mask).double()[None, None],
                                                 torch.from_numpy(shape).double()[None, None],
                                                 padding=candidate - 1).max().item()
            best = max(best, overlap / (area + shape.sum() - overlap))
        assert iou == pytest.approx(best, abs=1e-4), cls
    assert fits["mug"][1] == 44 and fits["mug"][0] > 0.9  # the stray piece is the rest of the union


@pytest.mark.parametrize("cls", ["ball", "cube", "star", "mug"])
def test_each_silhouette_fits_its_own_class_exactly(world, judge, cls):
    for side, x0, y0 in ((26, 10, 70), (47, 60, 8), (70, 30, 40)):
        mask = _placed(world, cls, side, x0, y0)
        fits = judge.silhouette_fits(mask | judge._holes(mask))
        assert fits[cls] == (pytest.approx(1.0), side)
        assert max(iou for other, (iou, _) in fits.items() if other != cls) < 0.9


def test_the_class_survives_rounded_corners_and_a_stray_piece(world, judge, accuracy_tool):
    """What a small VAE and UNet do to a subject's outline: blur rounds a cube's corners and a star's points, and
    a piece of background read as subject sits beside it. The subject's box moves with the stray piece; the
    class must not."""
    for cls in world.CLASSES:
        for side in (30, 50, 70):
            mask = _placed(world, cls, side, 20, 30)
            rounded = accuracy_tool._blur(mask[..., None].astype(np.float64), side / 16)[..., 0] > 0.5
            rounded[30 + side // 2:30 + side // 2 + 6, 20 + side + 4:20 + side + 10] = True  # 6 x 6 px, 4 px away
            assert judge._read_class(rounded, judge.silhouette_fits(rounded))[0] == cls, (cls, side)
