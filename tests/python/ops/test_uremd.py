"""UREMD: the native op against the plain PyTorch oracle, gradients, registration, properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import nondet_tol

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs(b, n, m, c, dtype=torch.float64, device="cpu", shared=False, weighted=False):
    g = torch.randn(b, n, c, dtype=dtype, device=device)
    p = torch.randn(1 if shared else b, m, c, dtype=dtype, device=device)
    w = torch.rand(b, n, dtype=dtype, device=device) if weighted else None
    return g, p, w


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 17, 5, 3), (3, 300, 1100, 20), (1, 700, 300, 64)])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(ops, reference, device, dtype, shape, shared, weighted):
    g, p, w = _inputs(*shape, dtype=dtype, device=device, shared=shared, weighted=weighted)
    got = ops.uremd(g, p, w)
    want = reference.uremd(g, p, w)
    assert got.dtype == dtype and got.shape == (shape[0],) and got.device == g.device
    torch.testing.assert_close(got.double(), want.double(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_min_cost_and_argmin_match_reference(ops, reference, device, dtype):
    g, p, _ = _inputs(2, 257, 1500, 24, dtype=dtype, device=device)
    _, min_cost, argmin = ops.uremd_with_argmin(g, p)
    ref_cost, ref_arg = reference.uremd_min_cost(g, p)
    torch.testing.assert_close(min_cost, ref_cost, rtol=TOL[dtype], atol=TOL[dtype])
    # Indices may differ only among ties within rounding: the chosen entry must be as good.
    differ = argmin != ref_arg
    if differ.any():
        chosen = torch.gather(1 - torch.nn.functional.normalize(g.double(), dim=-1) @ torch.nn.functional.normalize(p.double(), dim=-1).transpose(1, 2), 2, argmin.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(chosen[differ], ref_cost.double()[differ], rtol=0, atol=10 * TOL[dtype])


def test_ties_go_to_the_lowest_index(ops, device):
    p = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [0.5, 0.0]]], dtype=torch.float64, device=device)
    g = torch.tensor([[[3.0, 0.0], [0.0, -1.0]]], dtype=torch.float64, device=device)
    _, cost, arg = ops.uremd_with_argmin(g, p)
    # Row 0: entries 1, 3 and 4 share its direction (cost 0). Row 1: entries 1..4 are orthogonal
    # to it (cost 1). Both times the lowest index among the minima wins.
    assert arg.tolist() == [[1, 1]]
    assert cost[0, 0].item() == 0.0


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_float64(ops, device, weighted, shared):
    g, p, w = _inputs(2, 6, 4, 5, device=device, shared=shared, weighted=weighted)
    args = [g.requires_grad_(), p.requires_grad_()] + ([w.requires_grad_()] if weighted else [])
    assert torch.autograd.gradcheck(lambda *a: ops.uremd(*a), args, nondet_tol=nondet_tol(device))
    assert torch.autograd.gradgradcheck(lambda *a: ops.uremd(*a), args, nondet_tol=nondet_tol(device))


def test_gradient_matches_reference_autograd(ops, reference, device):
    g, p, w = _inputs(3, 50, 40, 16, device=device, weighted=True)
    grads = []
    for fn in (ops.uremd, reference.uremd):
        gi, pi, wi = (t.clone().requires_grad_() for t in (g, p, w))
        (fn(gi, pi, wi) * torch.tensor([1.0, -2.0, 0.5], dtype=g.dtype, device=device)).sum().backward()
        grads.append((gi.grad, pi.grad, wi.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_opcheck(ops, device):
    g, p, w = _inputs(2, 9, 7, 4, dtype=torch.float32, device=device, weighted=True)
    torch.library.opcheck(torch.ops.pickdraw.uremd.default, (g.requires_grad_(), p.requires_grad_(), w))
    torch.library.opcheck(torch.ops.pickdraw.uremd.default, (g.detach(), p.detach(), None))
    torch.library.opcheck(torch.ops.pickdraw._uremd_row_min.default, (g.detach(), p.detach()))


def test_non_contiguous_inputs_and_no_mutation(ops, reference, device):
    g = torch.randn(2, 8, 30, dtype=torch.float64, device=device).transpose(1, 2)  # [2, 30, 8] strided
    p = torch.randn(2, 8, 20, dtype=torch.float64, device=device).transpose(1, 2)
    g_before, p_before = g.clone(), p.clone()
    torch.testing.assert_close(ops.uremd(g, p), reference.uremd(g, p))
    assert torch.equal(g, g_before) and torch.equal(p, p_before)


def test_empty_and_zero_weight_problems(ops, device):
    assert torch.equal(ops.uremd(torch.zeros(2, 0, 3, device=device), torch.zeros(2, 0, 3, device=device)), torch.zeros(2, device=device))
    g = torch.randn(2, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    p = torch.randn(2, 4, 3, dtype=torch.float64, device=device)
    w = torch.ones(2, 5, dtype=torch.float64, device=device)
    w[0] = 0
    loss = ops.uremd(g, p, w)
    assert loss[0].item() == 0.0
    loss.sum().backward()
    assert torch.all(g.grad[0] == 0) and torch.isfinite(g.grad).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda: (torch.randn(5, 4), torch.randn(1, 3, 4)), "generated must be a 3-D tensor"),
        (lambda: (torch.randn(1, 5, 4), torch.randn(1, 3, 4, dtype=torch.float64)), "same dtype"),
        (lambda: (torch.ones(1, 5, 4, dtype=torch.long), torch.ones(1, 3, 4, dtype=torch.long)), "floating-point"),
        (lambda: (torch.randn(1, 5, 4), torch.randn(1, 3, 6)), "feature size C"),
        (lambda: (torch.randn(2, 5, 4), torch.randn(3, 3, 4)), "batch size"),
        (lambda: (torch.randn(1, 5, 4), torch.randn(1, 0, 4)), "palette has no features"),
        (lambda: (torch.randn(1, 5, 4), torch.randn(1, 3, 4), torch.ones(1, 4)), "weight must have shape"),
    ],
)
def test_bad_inputs_name_the_argument(ops, args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.uremd(*args())


def test_cross_device_inputs_are_refused(ops):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    with pytest.raises(RuntimeError, match="same device"):
        ops.uremd(torch.randn(1, 5, 4), torch.randn(1, 3, 4, device="cuda"))


# --- properties ------------------------------------------------------------------------------

sizes = st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.integers(1, 16))


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 2**31 - 1))
def test_zero_when_generated_is_a_subset_of_the_palette(ops, shape, seed):
    b, n, m, c = shape
    torch.manual_seed(seed)
    g = torch.randn(b, n, c, dtype=torch.float64)
    extra = torch.randn(b, m, c, dtype=torch.float64)
    palette = torch.cat([extra, g], dim=1)[:, torch.randperm(m + n)]
    assert torch.all(ops.uremd(g, palette).abs() < 1e-12)


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 2**31 - 1))
def test_not_zero_when_only_the_palette_is_a_subset(ops, shape, seed):
    b, n, m, c = shape
    torch.manual_seed(seed)
    c = max(c, 2)
    palette = torch.randn(b, m, c, dtype=torch.float64)
    # Generated features orthogonal to every palette entry's direction cannot be matched.
    novel = torch.randn(b, n, c, dtype=torch.float64)
    basis = torch.linalg.qr(palette.transpose(1, 2)).Q  # [b, c, min(c, m)]
    novel = novel - (novel @ basis) @ basis.transpose(1, 2)
    generated = torch.cat([palette, novel], dim=1)
    if c > m:  # a non-zero orthogonal complement exists
        assert torch.all(ops.uremd(generated, palette) > 1e-6)


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_never_rises_when_the_palette_grows(ops, shape, extra, seed):
    b, n, m, c = shape
    torch.manual_seed(seed)
    g = torch.randn(b, n, c, dtype=torch.float64)
    p = torch.randn(b, m, c, dtype=torch.float64)
    grown = torch.cat([p, torch.randn(b, extra, c, dtype=torch.float64)], dim=1)
    assert torch.all(ops.uremd(g, grown) <= ops.uremd(g, p) + 1e-12)


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 2**31 - 1))
def test_invariant_to_per_feature_scale(ops, shape, seed):
    b, n, m, c = shape
    torch.manual_seed(seed)
    g = torch.randn(b, n, c, dtype=torch.float64)
    p = torch.randn(b, m, c, dtype=torch.float64)
    g_scale = torch.rand(b, n, 1, dtype=torch.float64) * 100 + 0.01
    p_scale = torch.rand(b, m, 1, dtype=torch.float64) * 100 + 0.01
    torch.testing.assert_close(ops.uremd(g * g_scale, p * p_scale), ops.uremd(g, p), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 2**31 - 1))
def test_masked_features_do_not_contribute(ops, shape, seed):
    b, n, m, c = shape
    torch.manual_seed(seed)
    g = torch.randn(b, n, c, dtype=torch.float64)
    p = torch.randn(b, m, c, dtype=torch.float64)
    mask = (torch.rand(b, n) < 0.5).double()
    changed = torch.where(mask.bool().unsqueeze(-1), g, torch.randn_like(g) * 50)
    torch.testing.assert_close(ops.uremd(changed, p, mask), ops.uremd(g, p, mask))
    g_req = changed.clone().requires_grad_()
    ops.uremd(g_req, p, mask).sum().backward()
    assert torch.all(g_req.grad[mask == 0] == 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("shared", [False, True])
def test_fused_backward_matches_the_differentiable_formula(ops, device, dtype, shared):
    """A plain backward takes the fused kernel; create_graph=True takes the ATen formula."""
    g, p, w = _inputs(3, 40, 25, 12, dtype=dtype, device=device, shared=shared, weighted=True)
    g[0, 3] = 0  # a zero feature: the clamped-norm branch
    p[0, 2] = 0
    w[1] = 0  # a problem without weight
    upstream = torch.tensor([0.5, -1.0, 2.0], dtype=dtype, device=device)
    results = []
    for create_graph in (False, True):
        args = [t.clone().requires_grad_() for t in (g, p, w)]
        grads = torch.autograd.grad((ops.uremd(*args) * upstream).sum(), args, create_graph=create_graph)
        results.append([x.detach() for x in grads])
    for fused, formula in zip(*results):
        assert fused.dtype == dtype
        torch.testing.assert_close(fused, formula, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def test_opcheck_backward(ops, device):
    g, p, w = _inputs(2, 9, 7, 4, dtype=torch.float32, device=device, weighted=True)
    _, _, argmin = ops.uremd_with_argmin(g, p, w)
    grad_loss = torch.ones(2, device=device)
    op = torch.ops.pickdraw._uremd_backward.default
    torch.library.opcheck(op, (grad_loss, g, p, w, argmin, [True, True, True]), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(op, (grad_loss, g, p, None, argmin, [True, False, False]), test_utils=("test_schema", "test_faketensor"))


def test_zero_channel_features(ops, reference, device):
    """C = 0: every feature is a zero vector, cosine 0, cost 1; gradients exist and are 0."""
    g = torch.zeros(2, 4, 0, dtype=torch.float64, device=device, requires_grad=True)
    p = torch.zeros(2, 3, 0, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(2, 4, dtype=torch.float64, device=device, requires_grad=True)
    loss = ops.uremd(g, p, w)
    torch.testing.assert_close(loss, reference.uremd(g, p, w))
    loss.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert g.grad.shape == g.shape and p.grad.shape == p.shape
