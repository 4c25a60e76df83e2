"""The score of tests/evaluation/toy_world/subject_maps.py: the area under the ROC curve of a map against a mask,
checked against a brute-force count and on maps whose answer is known."""

from __future__ import annotations

import math

import numpy as np

from conftest import toy_world_module

subject_maps = toy_world_module("subject_maps")


def test_separating_maps_score_one_and_inverted_maps_zero():
    inside = np.zeros(16, dtype=bool)
    inside[:4] = True
    score = np.where(inside, 0.9, 0.1)
    assert subject_maps.roc_auc(score, inside) == 1.0
    assert subject_maps.roc_auc(-score, inside) == 0.0
    assert subject_maps.roc_auc(np.ones(16), inside) == 0.5


def test_matches_a_brute_force_count_of_pairs():
    rng = np.random.default_rng(3)
    score = rng.integers(0, 5, 40).astype(float)  # ties on purpose
    inside = rng.random(40) < 0.3
    pairs = [(p, n) for p in score[inside] for n in score[~inside]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert math.isclose(subject_maps.roc_auc(score, inside), expected)


def test_a_mask_without_subject_or_background_has_no_score():
    assert math.isnan(subject_maps.roc_auc(np.ones(4), np.zeros(4, dtype=bool)))
    assert math.isnan(subject_maps.roc_auc(np.ones(4), np.ones(4, dtype=bool)))
