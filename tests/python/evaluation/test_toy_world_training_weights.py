"""The loss weightings of tests/evaluation/toy_world/train.py. The base stage's (--subject-weight): the loss's weight
per latent pixel follows the subject's mask at the latent's resolution, with the pixels next to it, and each
picture's weights are normalised, so a uniform weight gives the unweighted loss. The autoencoder's
(--outline-weight): per pixel, on the subject and within 4 px of it, normalised likewise."""

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


def test_the_outline_weight_covers_the_subject_and_4_px_around_it(train):
    masks = np.zeros((1, 64, 64), dtype=bool)
    masks[0, 20:30, 30:40] = True
    weights = train.outline_weights(masks, 5.0, "cpu")
    assert weights.shape == (1, 1, 64, 64)
    expected = torch.ones(64, 64)
    expected[16:34, 26:44] = 5.0  # the square grown by 4 px on every side (a max filter is a square dilation)
    assert torch.equal(weights[0, 0], expected)
    assert train.outline_weights(masks, 1.0, "cpu") is None


def test_the_reconstruction_loss_is_l1_plus_l2_and_its_weights_move_only_its_balance(train):
    pixels = torch.zeros(1, 3, 8, 8)
    decoded = torch.zeros(1, 3, 8, 8)
    decoded[..., :4] = 0.5  # error 0.5 on the left half, 0 on the right
    uniform = float(train.reconstruction_loss(decoded, pixels, None))
    assert uniform == pytest.approx((0.5 + 0.25) / 2)
    assert float(train.reconstruction_loss(decoded, pixels, torch.full((1, 1, 8, 8), 3.0))) == pytest.approx(uniform)
    left = torch.ones(1, 1, 8, 8)
    left[..., :4] = 4.0  # the erring half weighs four times as much: 4 * 0.75 / (4 + 1)
    assert float(train.reconstruction_loss(decoded, pixels, left)) == pytest.approx(4 * 0.75 / 5)
    right = torch.ones(1, 1, 8, 8)
    right[..., 4:] = 4.0
    assert float(train.reconstruction_loss(decoded, pixels, right)) == pytest.approx(0.75 / 5)
