"""The subject-token attention maps of a watched layer: oracle, gradients, what the backward keeps, bad inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import nondet_tol

HEADS, DIM = 2, 8


def _inputs(device, dtype=torch.float64, batch=2, queries=12, tokens=7, requires_grad=False):
    torch.manual_seed(0)
    q = torch.randn(batch, queries, HEADS * DIM, dtype=dtype, device=device, requires_grad=requires_grad)
    k = (3 * torch.randn(batch, tokens, HEADS * DIM, dtype=dtype, device=device)).requires_grad_(requires_grad)
    return q, k


@pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
@pytest.mark.parametrize("index", [[2, 3], [0], [6, 1, 4], [3, 3]])
def test_matches_the_explicit_softmax(ops, reference, device, index, recompute):
    q, k = _inputs(device, requires_grad=True)
    token_index = torch.tensor(index, device=device)
    got = ops.token_attention_maps(q, k, HEADS, token_index, recompute)
    want = reference.token_attention_maps(q, k, HEADS, token_index)
    assert got.shape == (2, 12, len(index))
    torch.testing.assert_close(got, want)
    upstream = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, (q, k), upstream),
                               torch.autograd.grad(want, (q, k), upstream))


@pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
def test_gradcheck_and_second_derivatives(ops, device, recompute):
    q, k = _inputs(device, queries=6, tokens=5, requires_grad=True)
    token_index = torch.tensor([1, 3, 3], device=device)
    maps = lambda a, b: ops.token_attention_maps(a, b, HEADS, token_index, recompute)  # noqa: E731
    assert torch.autograd.gradcheck(maps, (q, k), nondet_tol=nondet_tol(device))
    assert torch.autograd.gradgradcheck(maps, (q, k), nondet_tol=nondet_tol(device))


def test_all_tokens_sum_to_one(ops, device):
    q, k = _inputs(device, dtype=torch.float32)
    maps = ops.token_attention_maps(q, k, HEADS, torch.arange(k.shape[1], device=device))
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 12, device=device))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 9), st.sampled_from([1, 2, 4]), st.integers(0, 2**31 - 1))
def test_maps_are_probabilities_and_both_backwards_agree(ops, batch, queries, tokens, heads, seed):
    """Any shape: maps lie in [0, 1], all tokens' maps sum to one per query, and keeping or recomputing the
    probabilities gives the same gradients."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, queries, heads * 3, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(batch, tokens, heads * 3, dtype=torch.float64, generator=generator, requires_grad=True)
    every = torch.arange(tokens)
    maps = ops.token_attention_maps(q, k, heads, every)
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps.sum(-1), torch.ones(batch, queries, dtype=torch.float64))
    chosen = torch.randint(0, tokens, (3,), generator=generator)
    upstream = torch.randn(batch, queries, 3, dtype=torch.float64, generator=generator)
    kept, recomputed = (torch.autograd.grad(ops.token_attention_maps(q, k, heads, chosen, r), (q, k), upstream)
                        for r in (False, True))
    torch.testing.assert_close(kept, recomputed)


@pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs_get_float32_maps_and_gradients_in_their_dtype(ops, reference, device, dtype, recompute):
    q, k = _inputs(device, dtype=dtype, requires_grad=True)
    token_index = torch.tensor([2, 3], device=device)
    got = ops.token_attention_maps(q, k, HEADS, token_index, recompute)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference.token_attention_maps(q, k, HEADS, token_index))
    grad_q, grad_k = torch.autograd.grad(got.sum(), (q, k))
    assert grad_q.dtype == dtype and grad_k.dtype == dtype
    exact = torch.autograd.grad(reference.token_attention_maps(q.double(), k.double(), HEADS, token_index).sum(),
                                (q, k))
    torch.testing.assert_close(grad_q.double(), exact[0].double(), rtol=2e-2, atol=2e-2)


def _kept_for_backward(run) -> list[torch.Tensor]:
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        run()
    return kept


def test_recomputing_backward_keeps_only_the_inputs(ops, device):
    """With recompute_in_backward the probabilities ([B, heads, N, T]) are not kept for the backward: only q and
    k (which the layer's fused attention keeps anyway) and the token index."""
    q, k = _inputs(device, dtype=torch.float32, queries=64, requires_grad=True)
    token_index = torch.tensor([2, 3], device=device)
    kept = _kept_for_backward(lambda: ops.token_attention_maps(q, k, HEADS, token_index, True))
    storages = {t.untyped_storage().data_ptr() for t in kept}
    assert storages == {t.untyped_storage().data_ptr() for t in (q, k, token_index)}, [t.shape for t in kept]
    explicit = _kept_for_backward(lambda: ops.token_attention_maps(q, k, HEADS, token_index, False))
    assert any(t.shape == (2, HEADS, 64, 7) for t in explicit)  # the probabilities, kept without it


def test_bad_inputs_are_explained(ops):
    q, k = _inputs("cpu", dtype=torch.float32)
    index = torch.tensor([1])
    with pytest.raises(RuntimeError, match="heads"):
        ops.token_attention_maps(q, k, 3, index)
    with pytest.raises(RuntimeError, match="share the batch"):
        ops.token_attention_maps(q, k[:1], HEADS, index)
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.token_attention_maps(q, k.double(), HEADS, index)
    with pytest.raises(RuntimeError, match="token_index must be a 1-D int64"):
        ops.token_attention_maps(q, k, HEADS, torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="3-D"):
        ops.token_attention_maps(q[0], k, HEADS, index)
