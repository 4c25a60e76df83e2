"""The attention recorder on a small pure-PyTorch cross-attention model (no ComfyUI needed)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import CTX_DIM, CTX_TOKENS, DIM, HEADS, make, recorder_attend, sdpa_attend

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_equals_sdpa_when_recording(ops, dtype):
    model, recorder = make(ops, dtype)
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    ctx = torch.randn(2, CTX_TOKENS, CTX_DIM, dtype=dtype)
    want = model(x, ctx, sdpa_attend)
    recorder.capture = True
    got = model(x, ctx, recorder_attend(recorder, [1, 0]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert set(recorder.maps()) == {"input.1.0", "middle.0.0", "output.1.0"}
    assert set(recorder.features()) == {"output.1.0"}


def test_maps_of_all_tokens_sum_to_one(ops):
    model, recorder = make(ops, tokens=range(CTX_TOKENS))
    recorder.capture = True
    model(torch.randn(1, 4, 8, 8), torch.randn(1, CTX_TOKENS, CTX_DIM), recorder_attend(recorder, [0]))
    for key, maps in recorder.maps().items():
        assert maps.shape[1] == CTX_TOKENS
        torch.testing.assert_close(maps.sum(1), torch.ones_like(maps.sum(1)))
    assert recorder.maps()["middle.0.0"].shape == (1, CTX_TOKENS, 4, 4)
    assert recorder.maps()["input.1.0"].shape == (1, CTX_TOKENS, 8, 8)


@pytest.mark.parametrize("order", [[0, 1], [1, 0], [0], [1, 0, 0]])
def test_conditional_rows_are_selected_for_every_row_order(ops, order):
    """Recorded maps equal those of the conditional rows run alone, in their batch order."""
    model, recorder = make(ops)
    per = 2
    x = torch.randn(len(order) * per, 4, 8, 8)
    ctx = torch.randn(len(order) * per, CTX_TOKENS, CTX_DIM)
    recorder.capture = True
    model(x, ctx, recorder_attend(recorder, order))
    got = recorder.maps()["output.1.0"]
    cond_rows = torch.cat([torch.arange(i * per, (i + 1) * per) for i, o in enumerate(order) if o == 0])
    _, alone = make(ops)
    alone.capture = True
    model(x[cond_rows], ctx[cond_rows], recorder_attend(alone, [0] * (len(cond_rows) // per)))
    torch.testing.assert_close(got, alone.maps()["output.1.0"])
    assert got.shape[0] == len(cond_rows)


def test_unconditional_only_records_nothing(ops):
    model, recorder = make(ops)
    recorder.capture = True
    model(torch.randn(2, 4, 8, 8), torch.randn(2, CTX_TOKENS, CTX_DIM), recorder_attend(recorder, [1]))
    assert recorder.maps() == {} and recorder.features() == {}


def test_no_recording_without_gradients_or_capture(ops):
    model, recorder = make(ops)
    with torch.no_grad():
        assert not recorder.recording
        model(torch.randn(2, 4, 8, 8), torch.randn(2, CTX_TOKENS, CTX_DIM), recorder_attend(recorder, [1, 0]))
    assert recorder.captured_bytes == 0
    with torch.enable_grad():
        assert recorder.recording


def test_gradient_reaches_the_latent_and_matches_finite_differences(ops):
    model, recorder = make(ops, torch.float64)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, CTX_TOKENS, CTX_DIM, dtype=torch.float64)

    def loss_of(latent):
        recorder.clear()
        model(latent, ctx, recorder_attend(recorder, [1, 0]))
        maps = recorder.maps()["output.1.0"].mean(1)  # [Bc, H, W]
        feats = recorder.features()["output.1.0"]
        return (maps**2).sum() + feats.pow(2).mean()

    assert torch.autograd.gradcheck(loss_of, (x,))


def test_captures_do_not_accumulate_across_steps(ops):
    model, recorder = make(ops)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    ctx = torch.randn(2, CTX_TOKENS, CTX_DIM)
    sizes = []
    for _ in range(5):
        recorder.clear()
        model(x, ctx, recorder_attend(recorder, [1, 0]))
        sizes.append(recorder.captured_bytes)
    assert len(set(sizes)) == 1 and sizes[0] > 0
    recorder.clear()
    assert recorder.captured_bytes == 0


def test_unwatched_layers_pass_through(ops):
    _, recorder = make(ops)
    q, k, v = torch.randn(2, 16, HEADS * DIM), torch.randn(2, CTX_TOKENS, HEADS * DIM), torch.randn(2, CTX_TOKENS, HEADS * DIM)
    recorder.capture = True
    out = recorder.cross_attention(q, k, v, "input.4.0", HEADS, [1, 0], 4, 4)
    torch.testing.assert_close(out, sdpa_attend(q, k, v, None, 4, 4))
    assert recorder.captured_bytes == 0


def test_bad_calls_are_explained(ops):
    _, recorder = make(ops)
    recorder.capture = True
    q, k = torch.randn(3, 16, HEADS * DIM), torch.randn(3, CTX_TOKENS, HEADS * DIM)
    with pytest.raises(RuntimeError, match="must divide the batch"):
        recorder.cross_attention(q, k, k, "output.1.0", HEADS, [1, 0], 4, 4)
    with pytest.raises(RuntimeError, match="does not match"):
        recorder.cross_attention(q[:2], k[:2], k[:2], "output.1.0", HEADS, [1, 0], 4, 5)
    beyond = ops.AttentionRecorder({"output.1.0": ops.LayerCapture(maps=True)}, [50])
    beyond.capture = True
    with pytest.raises(RuntimeError, match="beyond"):
        beyond.cross_attention(q[:1], k[:1], k[:1], "output.1.0", HEADS, [0], 4, 4)
    with pytest.raises(ValueError, match="neither maps nor features"):
        ops.AttentionRecorder({"output.1.0": ops.LayerCapture()}, [1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_models_get_a_float32_softmax(ops, dtype):
    """As ComfyUI's attention_basic: probabilities in float32, output back in the model's dtype."""
    _, recorder = make(ops, tokens=range(CTX_TOKENS))
    recorder.capture = True
    q = torch.randn(2, 16, HEADS * DIM, dtype=dtype)
    k = torch.randn(2, CTX_TOKENS, HEADS * DIM, dtype=dtype) * 4  # large logits: half softmax would round badly
    v = torch.randn(2, CTX_TOKENS, HEADS * DIM, dtype=dtype)
    out = recorder.cross_attention(q, k, v, "output.1.0", HEADS, [1, 0], 4, 4)
    assert out.dtype == dtype
    want = sdpa_attend(q.double(), k.double(), v.double(), None, 4, 4)
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)
    maps = recorder.maps()["output.1.0"]
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps.sum(1)), rtol=1e-6, atol=1e-6)


def test_recomputing_maps_in_the_backward_changes_nothing_but_memory(ops):
    """The split pass's recorder recomputes the attention probabilities in the backward: same maps, same
    gradient to the latent."""
    results = []
    for recompute in (False, True):
        model, recorder = make(ops, torch.float64)
        recorder.recompute_maps = recompute
        x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        ctx = torch.randn(2, CTX_TOKENS, CTX_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        model(x, ctx, recorder_attend(recorder, [1, 0]))
        loss = sum((maps**2).sum() for maps in recorder.maps().values())
        results.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
    torch.testing.assert_close(results[0], results[1])
