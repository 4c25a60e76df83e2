"""The guidance engine on the small cross-attention model: schedules, capture passes, and one
gradient step on the latent lowering the energy for every cond/uncond row order and batch size."""

from __future__ import annotations

import pytest
import torch

import tiny_models as tiny

SIGMAS = [10.0, 5.0, 2.0, 1.0]
ALL_LAYERS = ["input.1.0", "middle.0.0", "output.1.0"]
TOKENS = [2, 3]


def make_engine(ops, appearance=True, layout=True, **overrides):
    config = ops.GuidanceConfig()
    config.appearance_layers = ["output.1.0"] if appearance else []
    config.layout_layers = list(ALL_LAYERS) if layout else []
    config.token_indices = TOKENS
    config.appearance_start, config.appearance_end = 0.0, 1.0  # both terms on at every step the tests run
    config.layout_end = 1.0
    config.min_mask_pixels = 8
    for key, value in overrides.items():
        setattr(config, key, value)
    return ops.GuidanceEngine(config)


def metadata(ops, layers):
    m = ops.GuidanceMetadata()
    m.model_family = "test"
    m.layer_keys = layers
    m.sigmas = SIGMAS
    m.tokens = ops.SubjectTokens("dog", "a photo of a dog", TOKENS)
    m.feature_source = "attn2_query"
    return m


def capture_stores(ops, model):
    """Palette from a 'reference' latent, template from a 'vanilla' latent, one entry per sigma."""
    engine = make_engine(ops)
    recorder = ops.AttentionRecorder(engine.recorder_layers(), TOKENS)
    recorder.capture = True
    palette = ops.Palette(metadata(ops, ["output.1.0"]))
    template = ops.LayoutTemplate(metadata(ops, ALL_LAYERS))
    torch.manual_seed(1)
    reference, vanilla = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, tiny.CTX_TOKENS, tiny.CTX_DIM)
    with torch.no_grad():
        for i, sigma in enumerate(SIGMAS):
            recorder.clear()
            model(reference + 0.1 * sigma * torch.randn_like(reference), ctx, tiny.recorder_attend(recorder, [0]))
            engine.record_palette_entry(recorder, palette, i)
            recorder.clear()
            model(vanilla, ctx, tiny.recorder_attend(recorder, [0]))
            engine.record_template_entry(recorder, template, i)
    palette.check_complete()
    template.check_complete()
    return palette, template


def test_schedule_boundaries_are_exact(ops):
    engine = make_engine(ops, appearance_start=0.1, appearance_end=0.8, layout_end=0.5)
    assert [engine.appearance_active(i, 20) for i in range(20)] == [2 <= i < 16 for i in range(20)]
    assert [engine.layout_active(i, 20) for i in range(20)] == [i < 10 for i in range(20)]
    off = make_engine(ops, appearance_weight=0.0)
    assert not any(off.appearance_active(i, 20) for i in range(20))
    with pytest.raises(RuntimeError, match="outside"):
        engine.layout_active(20, 20)
    with pytest.raises(ValueError, match="window"):
        make_engine(ops, layout_start=0.6, layout_end=0.5)


@pytest.mark.parametrize("steps", [7, 10, 12, 20, 25, 30, 50])
def test_windows_of_decimal_fractions_start_and_end_on_whole_steps(ops, steps):
    """0.3 * 10 is 3.0000000000000004 in doubles: the window still starts at step 3; the windows are exactly the
    steps i with start * steps <= i < end * steps counted in whole hundredths."""
    engine = make_engine(ops, appearance_start=0.3, appearance_end=0.7, layout_start=0.1, layout_end=0.9)
    assert [engine.appearance_active(i, steps) for i in range(steps)] == [30 * steps <= 100 * i < 70 * steps
                                                                          for i in range(steps)]
    assert [engine.layout_active(i, steps) for i in range(steps)] == [10 * steps <= 100 * i < 90 * steps
                                                                      for i in range(steps)]


def test_recorder_layers_cover_both_terms(ops):
    layers = make_engine(ops).recorder_layers()
    assert set(layers) == set(ALL_LAYERS)
    assert layers["output.1.0"].features and layers["output.1.0"].maps
    assert layers["input.1.0"].maps and not layers["input.1.0"].features


def test_capture_passes_fill_the_stores(ops):
    engine = make_engine(ops)
    model, _ = tiny.make(ops)
    palette, template = capture_stores(ops, model)
    entry = palette.get(0, "output.1.0")
    assert entry.ndim == 2 and entry.shape[1] == tiny.HEADS * tiny.DIM and 8 <= entry.shape[0] <= 64
    assert template.get(2, "middle.0.0").shape == (1, 4, 4)



def test_a_user_mask_keeps_the_features_under_it_as_area_resizing_does(ops):
    """A palette's user mask is averaged over each token's area (the oracle: torch's area interpolation) and the tokens
    above one half are kept; the entry holds exactly their features. Without a mask the saliency mask decides; a mask
    that keeps no token, or a batch of masks, is refused with the fix."""
    engine = make_engine(ops)
    model, _ = tiny.make(ops)
    recorder = ops.AttentionRecorder(engine.recorder_layers(), TOKENS)
    recorder.capture = True
    torch.manual_seed(3)
    with torch.no_grad():
        model(torch.randn(1, 4, 8, 8), torch.randn(1, tiny.CTX_TOKENS, tiny.CTX_DIM), tiny.recorder_attend(recorder, [0]))
    mask = torch.zeros(1, 32, 32)  # one ComfyUI MASK
    mask[:, 5:23, 9:30] = 1
    h, w = recorder.maps()["output.1.0"].shape[-2:]
    expected = torch.nn.functional.interpolate(mask.unsqueeze(0), size=(h, w), mode="area").flatten() > 0.5
    assert 0 < int(expected.sum()) < h * w
    assert torch.equal(engine.palette_mask(recorder, h, w, 0, mask), expected)
    palette = ops.Palette(metadata(ops, ["output.1.0"]))
    engine.record_palette_entry(recorder, palette, 0, 0, mask)
    assert torch.equal(palette.get(0, "output.1.0"), recorder.features()["output.1.0"][0][expected])
    assert torch.equal(engine.palette_mask(recorder, h, w), engine.subject_mask(recorder, h, w)[0].bool())
    with pytest.raises(ValueError, match="widen it"):
        engine.palette_mask(recorder, h, w, 0, torch.zeros(32, 32))
    with pytest.raises(ValueError, match=r"one \[H, W\] mask"):
        engine.palette_mask(recorder, h, w, 0, torch.ones(2, 32, 32))

@pytest.mark.parametrize("per", [1, 2])
@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0], [1, 0, 0]])
@pytest.mark.parametrize("terms", ["both", "appearance", "layout"])
def test_one_gradient_step_lowers_the_energy(ops, order, terms, per):
    engine = make_engine(ops, appearance=terms != "layout", layout=terms != "appearance")
    model, _ = tiny.make(ops)
    palette, template = capture_stores(ops, model)
    recorder = ops.AttentionRecorder(engine.recorder_layers(), TOKENS)
    torch.manual_seed(2)
    x = torch.randn(len(order) * per, 4, 8, 8)
    ctx = torch.randn(len(order) * per, tiny.CTX_TOKENS, tiny.CTX_DIM)

    def energy(latent):
        recorder.clear()
        model(latent, ctx, tiny.recorder_attend(recorder, order))
        return engine.step_loss(recorder, palette, template, 4.0, 1, 4)

    x = x.requires_grad_()
    before = energy(x)
    assert before.appearance_on == (terms != "layout") and before.layout_on == (terms != "appearance")
    assert before.palette_sigma_index in (-1, 1) and before.total.shape == (order.count(0) * per,)
    (grad,) = torch.autograd.grad(before.total.sum(), x)
    assert grad.abs().sum() > 0
    with torch.enable_grad():
        after = energy((x - 0.5 * grad / grad.abs().max()).detach())
    assert torch.all(after.total < before.total.detach()), (before.total, after.total)


def test_step_loss_errors_name_the_problem(ops):
    engine = make_engine(ops)
    model, _ = tiny.make(ops)
    palette, template = capture_stores(ops, model)
    recorder = ops.AttentionRecorder(engine.recorder_layers(), TOKENS)
    model(torch.randn(2, 4, 8, 8), torch.randn(2, tiny.CTX_TOKENS, tiny.CTX_DIM), tiny.recorder_attend(recorder, [1, 0]))
    with pytest.raises(RuntimeError, match="no palette"):
        engine.step_loss(recorder, None, template, 4.0, 0, 4)
    with pytest.raises(ValueError, match="outside the recorded range"):
        engine.step_loss(recorder, palette, template, 40.0, 0, 4)
    empty = ops.AttentionRecorder(engine.recorder_layers(), TOKENS)
    with pytest.raises(RuntimeError, match="no features were recorded"):
        engine.step_loss(empty, palette, template, 4.0, 0, 4)


def test_no_term_on_gives_zero_energy(ops):
    engine = make_engine(ops, appearance_start=0.5, layout_start=0.5)
    model, _ = tiny.make(ops)
    recorder = ops.AttentionRecorder(engine.recorder_layers(), TOKENS)
    model(torch.randn(2, 4, 8, 8), torch.randn(2, tiny.CTX_TOKENS, tiny.CTX_DIM), tiny.recorder_attend(recorder, [1, 0]))
    loss = engine.step_loss(recorder, None, None, 4.0, 0, 4)
    assert not loss.appearance_on and not loss.layout_on
    assert torch.equal(loss.total, torch.zeros(1))
