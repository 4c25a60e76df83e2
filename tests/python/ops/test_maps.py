"""Saliency masks, smoothing and the layout loss against the oracle, with gradients and properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import nondet_tol


@pytest.mark.parametrize("out_size", [None, (16, 16), (4, 8), (32, 24)])
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.5, 0.9])
def test_saliency_mask_matches_reference(ops, reference, device, out_size, tau):
    m = torch.rand(3, 8, 8, device=device) ** 3
    torch.testing.assert_close(ops.saliency_mask(m, tau, 4, out_size), reference.saliency_mask(m, tau, 4, out_size))


def test_saliency_mask_threshold_behaviour(ops, device):
    m = torch.arange(16.0, device=device).view(1, 4, 4)
    assert ops.saliency_mask(m, 0.5, 0).sum() == 8  # normalised i/15 > 0.5 for i >= 8
    assert ops.saliency_mask(m, 0.0, 0).sum() == 15  # only the minimum is not > 0
    assert ops.saliency_mask(m, 1.0, 0).sum() == 0  # nothing exceeds the maximum...
    assert ops.saliency_mask(m, 1.0, 4).sum() == 4  # ...so the top-k fallback applies
    assert ops.saliency_mask(m * 1000 - 5, 0.5, 0).equal(ops.saliency_mask(m, 0.5, 0))


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_saliency_mask_is_monotone_in_tau(ops, t1, t2, seed):
    torch.manual_seed(seed)
    m = torch.rand(2, 6, 6)
    lo, hi = sorted((t1, t2))
    a, b = ops.saliency_mask(m, lo, 0), ops.saliency_mask(m, hi, 0)
    assert torch.all(b <= a)


def test_saliency_mask_never_empty_with_fallback_and_no_grad(ops, device):
    m = torch.zeros(2, 5, 5, device=device, requires_grad=True)
    mask = ops.saliency_mask(m, 0.5, 4, (10, 10))
    assert mask.shape == (2, 10, 10) and not mask.requires_grad
    assert mask.sum(dim=(1, 2)).tolist() == [4, 4]


def test_average_token_maps_matches_reference(ops, reference, device):
    maps = [torch.rand(2, s, s, device=device, dtype=torch.float64) for s in (8, 16, 32)]
    torch.testing.assert_close(ops.average_token_maps(maps, (16, 16)), reference.average_token_maps(maps, (16, 16)))


@pytest.mark.parametrize("kernel_size, std_dev", [(1, 1.0), (3, 0.5), (5, 1.5), (7, 3.0)])
def test_gaussian_smooth_matches_reference_and_gradcheck(ops, reference, device, kernel_size, std_dev):
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, device=device, requires_grad=True)
    torch.testing.assert_close(ops.gaussian_smooth(x, kernel_size, std_dev), reference.gaussian_smooth(x, kernel_size, std_dev))
    assert torch.autograd.gradcheck(lambda t: ops.gaussian_smooth(t, kernel_size, std_dev), (x,), nondet_tol=nondet_tol(device))


def test_gaussian_kernel_matches_reference(ops, reference):
    torch.testing.assert_close(ops.gaussian_kernel_1d(5, 1.3), reference.gaussian_kernel_1d(5, 1.3))


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 12), st.integers(3, 12), st.sampled_from([1, 3, 5]), st.floats(0.1, 5), st.floats(-10, 10))
def test_smoothing_preserves_a_constant_map(ops, h, w, k, std_dev, value):
    c = torch.full((1, h, w), value, dtype=torch.float64)
    torch.testing.assert_close(ops.gaussian_smooth(c, k, std_dev), c, rtol=1e-12, atol=1e-12)


def test_smoothing_refuses_maps_smaller_than_the_kernel(ops):
    with pytest.raises(RuntimeError, match="too small for reflect padding"):
        ops.gaussian_smooth(torch.rand(1, 2, 2), 5, 1.0)
    with pytest.raises(RuntimeError, match="positive odd"):
        ops.gaussian_smooth(torch.rand(1, 8, 8), 4, 1.0)


def test_layout_loss_matches_reference_and_gradcheck(ops, reference, device):
    maps = [torch.rand(2, s, s, dtype=torch.float64, device=device, requires_grad=True) for s in (8, 16)]
    temps = [torch.rand(1, s, s, dtype=torch.float64, device=device) for s in (8, 16)]
    torch.testing.assert_close(ops.layout_loss(maps, temps), reference.layout_loss(maps, temps))
    assert torch.autograd.gradcheck(lambda a, b: ops.layout_loss([a, b], temps, 3, 0.5), tuple(maps), nondet_tol=nondet_tol(device))
    smoothed = [ops.gaussian_smooth(t) for t in temps]
    torch.testing.assert_close(ops.layout_loss(maps, smoothed, templates_smoothed=True), ops.layout_loss(maps, temps))


def test_layout_loss_of_layers_sharing_shapes_matches_reference_and_gradcheck(ops, reference, device):
    """Layers of one shape are compared in one stacked call; interleaved shapes and templates of batch 1 and B
    must give the per-layer mean all the same."""
    sizes = (8, 6, 8, 6, 8)
    maps = [torch.rand(2, s, s, dtype=torch.float64, device=device, requires_grad=True) for s in sizes]
    temps = [torch.rand(1 if i % 2 else 2, s, s, dtype=torch.float64, device=device) for i, s in enumerate(sizes)]
    torch.testing.assert_close(ops.layout_loss(maps, temps), reference.layout_loss(maps, temps))
    assert torch.autograd.gradcheck(lambda *m: ops.layout_loss(list(m), temps, 3, 0.5), tuple(maps),
                                    nondet_tol=nondet_tol(device))


@settings(max_examples=20, deadline=None)
@given(st.integers(3, 16), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_layout_loss_is_zero_for_identical_maps(ops, size, batch, seed):
    torch.manual_seed(seed)
    maps = [torch.rand(batch, size, size), torch.rand(batch, size + 1, size)]
    assert torch.all(ops.layout_loss(maps, [m.clone() for m in maps]) == 0)


def test_layout_loss_gradient_lowers_it(ops, device):
    a = torch.rand(2, 16, 16, device=device, requires_grad=True)
    t = torch.rand(2, 16, 16, device=device)
    loss = ops.layout_loss([a], [t])
    loss.sum().backward()
    with torch.no_grad():
        stepped = ops.layout_loss([a - 0.05 * a.grad], [t])
    assert torch.all(stepped < loss.detach())


def test_layout_loss_compares_where_the_subject_is_not_how_much_it_is_attended(ops):
    """The template is another model's map of another token: a map with the template's subject at three times its
    attention matches it, and growing the subject over the template's place does not; the paper's loss on the maps
    themselves ranks these two the other way."""
    template = torch.full((1, 16, 16), 0.01)
    template[:, 4:8, 4:8] = 0.05
    stronger = 3 * template
    grown = torch.full((1, 16, 16), 0.01)
    grown[:, 2:12, 2:12] = 0.05
    assert float(ops.layout_loss([stronger], [template])) < 1e-6
    assert float(ops.layout_loss([grown], [template])) > 0.1
    unscaled = lambda a: torch.linalg.vector_norm(ops.gaussian_smooth(a) - ops.gaussian_smooth(template))  # noqa: E731
    assert unscaled(stronger) > unscaled(grown)


def test_layout_loss_errors(ops):
    with pytest.raises(RuntimeError, match="pair up"):
        ops.layout_loss([torch.rand(1, 8, 8)], [])
    with pytest.raises(ValueError, match="another image size"):
        ops.layout_loss([torch.rand(1, 8, 8)], [torch.rand(1, 4, 4)])
