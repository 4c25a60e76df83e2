"""The claims' statistics (tests/evaluation/toy_world/evaluate.py): bootstrap intervals over seeds, and the paired
difference of a cell with its baseline, checked on made-up rows whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import toy_world_module

evaluate = toy_world_module("evaluate")
PROMPTS = (("in the snow", True), ("on the beach", False), ("at night", False))


def rows(seed_effect: np.ndarray, shift: float = 0.0, box_shift: int = 0) -> list[dict]:
    """One row per seed and prompt: fidelity and identity carry a per-seed effect (some seeds are easy, some hard)
    plus `shift`; boxes move with the seed, and by `box_shift` pixels to the right."""
    out = []
    for seed, effect in enumerate(seed_effect):
        for prompt, positioned in PROMPTS:
            x = 10 + 5 * seed + box_shift
            out.append({"seed": seed, "prompt": prompt, "positioned": positioned,
                        "identity": float(np.clip(effect + shift, 0, 1)), "class": 1.0,
                        "fidelity": float(np.clip(effect + shift, 0, 1)), "reference scene": 0.0, "size": 0.4,
                        "box": [x, 40, x + 40, 80]})
    return out


def test_a_cell_against_itself_differs_by_nothing():
    rng = np.random.default_rng(0)
    cell = rows(np.random.default_rng(1).uniform(0.2, 0.8, 12))
    difference = evaluate.paired_difference(cell, cell, rng, resamples=200)
    for key, value in difference.items():
        assert value == {"mean": 0.0, "low": 0.0, "high": 0.0}, key


def test_a_constant_shift_is_found_exactly_whatever_the_seeds_spread():
    rng = np.random.default_rng(0)
    effect = np.random.default_rng(2).uniform(0.2, 0.7, 12)
    difference = evaluate.paired_difference(rows(effect, shift=0.1), rows(effect), rng, resamples=200)
    for key in ("identity", "fidelity"):
        assert difference[key]["mean"] == pytest.approx(0.1)
        assert difference[key]["low"] == pytest.approx(0.1) and difference[key]["high"] == pytest.approx(0.1)
    # moving every box by the same amount moves their centres together: their spread does not change
    moved = evaluate.paired_difference(rows(effect, box_shift=7), rows(effect), rng, resamples=200)
    assert moved["diversity"]["mean"] == pytest.approx(0.0, abs=1e-12)


def test_pairing_finds_a_small_change_that_the_two_cells_intervals_hide():
    """The reason for the paired interval: seeds differ far more than the change does, so each cell's own interval
    is wide and the two overlap, while the difference on the same seeds is clearly above 0."""
    rng = np.random.default_rng(0)
    effect = np.random.default_rng(3).uniform(0.1, 0.8, 16)
    noise = np.random.default_rng(4).normal(0, 0.01, 16)
    baseline, cell = rows(effect), rows(effect + noise, shift=0.05)
    ours, theirs = evaluate.summarise(cell, rng, 500), evaluate.summarise(baseline, rng, 500)
    assert ours["fidelity"]["low"] < theirs["fidelity"]["high"]  # the cells' own intervals overlap
    difference = evaluate.paired_difference(cell, baseline, rng, resamples=500)
    assert difference["fidelity"]["low"] > 0.0
    assert difference["fidelity"]["mean"] == pytest.approx(0.05 + noise.mean(), abs=1e-9)


def test_a_cell_and_a_baseline_of_different_seeds_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same seeds"):
        evaluate.paired_difference(rows(np.full(4, 0.5)), rows(np.full(5, 0.5)), rng, resamples=10)


def test_each_cell_is_compared_with_its_own_baseline():
    assert evaluate.baseline_of("vanilla") is None
    assert evaluate.baseline_of("lora") == "vanilla"
    assert evaluate.baseline_of("vanilla+palette@0.1") == "vanilla"
    assert evaluate.baseline_of("lora+pick-and-draw@0.3") == "lora"
    assert evaluate.baseline_of("lora+layout@0.3") == "lora"
