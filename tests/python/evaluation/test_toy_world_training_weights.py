"""The base stage's subject weighting (tests/evaluation/toy_world/train.py --subject-weight): the loss's weight per
latent pixel follows the subject's mask at the latent's resolution, with the pixels next to it, and each
picture's weights are normalised, so a uniform weight gives the unweighted loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import toy_world_module


@pytest.fixture(scope="module")
def train():
    return toy_world_module("train")


def test_the_subject_and_its_neighbours_get_the_weight_and_the_rest_one(train):
    masks = np.zeros((2, 128, 128), dtype=bool)
    masks[0, 40:48, 64:72] = True  # exactly latent pixel (5, 8)
    masks[1, 40:44, 64:72] = True  # half of it
    weights = train.subject_weights(masks, 5.0)
    assert weights.shape == (2, 1, 16, 16)
    expected = torch.ones(16, 16)
    expected[4:7, 7:10] = 5.0
    assert torch.equal(weights[0, 0], expected)
    assert torch.equal(weights[1, 0][4:7, 7:10], torch.full((3, 3), 3.0))  # 1 + (5 - 1) * 0.5
    assert weights[1, 0].sum() == 256 - 9 + 9 * 3.0


def test_a_world_picture_weighs_its_subject(train):
    world = toy_world_module("world")
    _, mask, truth = world.sample(31)
    assert np.array_equal(world.subject_mask(truth), mask)
    weights = train.subject_weights(mask[None], 4.0)[0, 0]
    x0, y0, x1, y1 = truth.box
    centre = ((y0 + y1) // 16, (x0 + x1) // 16)
    assert weights[centre] > 3.0 and weights[0, 0] == 1.0 and weights[15, 15] == 1.0


class _Denoiser:
    """apply_model stand-in: the denoised estimate is the noisy latent itself (its error is sigma * noise)."""

    def apply_model(self, x, sigma, c_crossattn):
        return x


def _loss(train, weights, seed=0):
    latents = torch.zeros(3, 4, 16, 16)
    sigmas = torch.tensor([0.5, 1.0, 2.0])
    return train.unet_loss(_Denoiser(), lambda tokens: (None, None), latents, torch.zeros(3, 77, dtype=torch.long),
                           torch.Generator().manual_seed(seed), "cpu", sigmas, 5.0, weights)


def test_uniform_weights_give_the_unweighted_loss_and_others_move_it(train):
    unweighted = _loss(train, None)
    assert _loss(train, torch.full((3, 1, 16, 16), 7.0)) == pytest.approx(float(unweighted), rel=1e-6)
    # all the weight on one pixel: the loss is that pixel's squared error alone, with each sample's Min-SNR weight
    one = torch.zeros(3, 1, 16, 16)
    one[:, :, 3, 3] = 1.0
    generator = torch.Generator().manual_seed(0)  # the draws unet_loss makes, in its order
    sigma = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (3,), generator=generator)]
    noise = torch.randn(3, 4, 16, 16, generator=generator)
    error = (sigma.view(-1, 1) * noise[:, :, 3, 3]).pow(2).mean(dim=1)
    expected = (error * (sigma.pow(-2).clamp(max=5.0) + 1)).mean()
    assert float(_loss(train, one)) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) != pytest.approx(float(unweighted), rel=1e-2)
