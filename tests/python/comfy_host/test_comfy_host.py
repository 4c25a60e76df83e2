"""The host adapter against real ComfyUI with a tiny SD1.x UNet (skipped without a ComfyUI checkout)."""

from __future__ import annotations

import types

import pytest
import torch

from comfy_env import (conditioning, require_comfyui, sharpen_cross_attention, subject_conditioning, tiny_sd1_lora,
                       tiny_sd1_patcher)
from tiny_models import store_metadata


@pytest.fixture(scope="module")
def host():
    return require_comfyui()


def sample(patcher, steps=2, cfg=7.5, seed=0):
    import comfy.sample

    latent = torch.zeros(1, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(patcher, noise, steps, cfg, "euler", "normal", conditioning(1), conditioning(2),
                               latent, seed=seed, disable_pbar=True)


def attention_census(patcher, run) -> set[str]:
    """The cross-attention layers ComfyUI actually runs in one step of run(model, steps), seen by an attn2 patch."""
    seen = set()

    def census(n, context, value, extra_options):
        block = extra_options["block"]
        seen.add(f"{block[0]}.{block[1]}.{extra_options['block_index']}")
        return n, context, value

    counted = patcher.clone()
    counted.set_model_attn2_patch(census)
    run(counted, steps=1)
    return seen


def test_layer_table_matches_the_layers_comfyui_runs(host):
    patcher = tiny_sd1_patcher()
    table = host.layer_table(patcher)
    assert host.model_family(patcher) == "sd1"
    keys = [layer.key for layer in table.layers()]
    assert keys == ["input.1.0", "input.3.0", "middle.0.0", "output.0.0", "output.1.0", "output.2.0", "output.3.0"]
    assert attention_census(patcher, sample) == set(keys)


def test_recorder_attached_keeps_the_output_and_records_every_layer(ops, host):
    patcher = tiny_sd1_patcher()
    table = host.layer_table(patcher)
    layers = {key: ops.LayerCapture(maps=True, features=key.startswith("output")) for key in table.default_layout_layers()}
    recorder = ops.AttentionRecorder(layers, [2, 3])
    recorder.capture = True
    patched = host.attach_recorder(patcher, recorder, table)
    got = sample(patched, steps=1)
    want = sample(patcher, steps=1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    maps = recorder.maps()
    assert set(maps) == set(layers)
    for key, m in maps.items():
        h, w = table.token_grid(key, 16, 16)
        assert m.shape == (1, 2, h, w), key  # one conditional row, two tokens
    assert "output.3.0" in recorder.features() and "input.1.0" not in recorder.features()
    # The original MODEL is untouched: no replace patch leaked into it.
    assert "patches_replace" not in patcher.model_options.get("transformer_options", {})


def test_unsupported_models_are_named(host):
    fake = types.SimpleNamespace(model=types.SimpleNamespace(model_config=types.SimpleNamespace()))
    with pytest.raises(ValueError, match="SD1.x, SD2.x and SDXL"):
        host.model_family(fake)


def _engine_and_stores(ops, host, patcher, steps):
    import comfy.samplers

    table = host.layer_table(patcher)
    config = ops.GuidanceConfig()
    config.appearance_layers = table.default_appearance_layers(16, 16)  # sample()'s latent
    config.layout_layers = table.default_layout_layers()
    config.token_indices = [2, 3]
    config.appearance_start, config.appearance_end = 0.0, 1.0  # the appearance term on every step
    config.layout_end = 1.0
    engine = ops.GuidanceEngine(config)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", steps)[:-1]
    template = ops.LayoutTemplate(store_metadata(ops, config.layout_layers, sigmas))
    palette = ops.Palette(store_metadata(ops, config.appearance_layers, sigmas))
    # Template: the unguided run of the template seed; palette: features of a "reference" run.
    sample(host.capture_each_step(patcher, engine, lambda i, n, s, rec: engine.record_template_entry(rec, template, i)),
           steps=steps, seed=0)
    sample(host.capture_each_step(patcher, engine, lambda i, n, s, rec: engine.record_palette_entry(rec, palette, i)),
           steps=steps, seed=11)
    return engine, palette, template


def test_capture_passes_record_one_entry_per_step(ops, host):
    engine, palette, template = _engine_and_stores(ops, host, tiny_sd1_patcher(), steps=4)
    palette.check_complete()
    template.check_complete()
    assert len(template) == 4 * 7 and len(palette) == 4 * len(engine.config.appearance_layers)


def test_guided_sampling_lowers_its_energy_against_the_same_seed_unguided(ops, host):
    """Both terms end lower than in the unguided run of the same seed (strength 0 runs the same code and logs the
    energy without moving the latent). A random model's energies are flat: at strength 1 (each guided step moves
    the prediction as far as the step's own noise estimate) they fell by about 4% here; a flipped sign raises them."""
    runs = _unguided_and_guided_logs(ops, host, sharpen_cross_attention(tiny_sd1_patcher()), steps=6)
    assert [entry["step"] for entry in runs[1.0]] == list(range(6))
    _assert_both_energies_fell(runs)


def _unguided_and_guided_logs(ops, host, patcher, steps: int) -> dict:
    """{strength: step log} of one seed at strength 0 (the energies logged, the latent left alone) and 1."""
    engine, palette, template = _engine_and_stores(ops, host, patcher, steps)
    runs = {}
    for strength in (0.0, 1.0):
        guided, run = host.guide_model(patcher, engine, palette, template, strength)
        sample(guided, steps=steps, seed=3)
        runs[strength] = run.log
    return runs


def _assert_both_energies_fell(runs: dict) -> None:
    unguided, guided = runs[0.0][-1], runs[1.0][-1]
    assert guided["not_finite"] == 0
    assert guided["appearance"] < 0.98 * unguided["appearance"], (guided, unguided)
    assert guided["layout"] < 0.98 * unguided["layout"], (guided, unguided)


@pytest.mark.parametrize("with_lora", [False, True], ids=["fp8", "fp8-with-lora"])
def test_fp8_stored_weights_are_guided_and_stay_fp8(ops, host, with_lora):
    """ComfyUI's fp8 weight storage (as --fp8_e4m3fn-unet gives: weights kept in float8, each layer computed in
    float32), with a LoRA patched over it or not: both energies fall as on float32 weights, and the weights stay
    float8 (the gradients reach the latent through the layers' float32 copies; nothing upcasts the model). Under
    torch.inference_mode() as ComfyUI runs prompts: outside it ComfyUI's own fp8 rounding of LoRA-patched weights
    fails, guided or not."""
    import comfy.sd

    with torch.inference_mode():
        patcher = sharpen_cross_attention(tiny_sd1_patcher(dtype=torch.float8_e4m3fn, manual_cast_dtype=torch.float32))
        if with_lora:
            patcher, _ = comfy.sd.load_lora_for_models(patcher, None, tiny_sd1_lora(patcher, rank=4, seed=1), 1.0, 0.0)
            assert patcher.patches, "ComfyUI placed none of the LoRA's keys"
        runs = _unguided_and_guided_logs(ops, host, patcher, steps=6)
    _assert_both_energies_fell(runs)
    assert {p.dtype for p in patcher.model.diffusion_model.parameters()} == {torch.float8_e4m3fn}


def test_batched_and_split_guided_passes_give_the_same_sample_and_gradients(ops, host):
    """One forward with gradients over both CFG rows, or the conditional rows with gradients and the
    unconditional rows apart: the gradient only flows from the conditional rows, so both are the same run."""
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    engine, palette, template = _engine_and_stores(ops, host, patcher, steps=4)
    results = {}
    for batched in (True, False):
        guided, run = host.guide_model(patcher, engine, palette, template, 0.5, batched=batched)
        assert run.batched is batched
        results[batched] = (sample(guided, steps=4, seed=3), run.log)
    # float32 sums in batch-1 and batch-2 kernels differ in the last bits; strength 1e4 scales that up
    torch.testing.assert_close(results[True][0], results[False][0], rtol=2e-3, atol=2e-3)
    for one, other in zip(results[True][1], results[False][1]):
        assert one["step"] == other["step"]
        assert one["total"] == pytest.approx(other["total"], rel=1e-4)


def test_split_pass_recomputes_feed_forwards_and_puts_their_forward_back(host):
    """The split pass keeps only the feed-forward blocks' inputs for the backward: the same gradient from less
    kept memory, and afterwards every block has its own forward again (another pack's instance forward too)."""
    import comfy.ldm.modules.attention

    model = tiny_sd1_patcher().model
    blocks = [m for m in model.diffusion_model.modules() if isinstance(m, comfy.ldm.modules.attention.FeedForward)]
    other_pack = lambda x: type(blocks[0]).forward(blocks[0], x)  # noqa: E731
    blocks[0].forward = other_pack
    context = conditioning(1)[0][0]

    def gradient_and_kept_bytes(recompute):
        kept = {}

        def pack(tensor):
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with host.guided_pass._feed_forwards_recomputed(host.guided_pass._feed_forward_blocks(model) if recompute else []):
                out = model.apply_model(x, torch.tensor([5.0]), c_crossattn=context)
        return torch.autograd.grad(out.square().sum(), x)[0], sum(kept.values())

    plain_gradient, plain_bytes = gradient_and_kept_bytes(False)
    gradient, kept_bytes = gradient_and_kept_bytes(True)
    torch.testing.assert_close(gradient, plain_gradient)
    assert kept_bytes < 0.9 * plain_bytes, (kept_bytes, plain_bytes)
    assert blocks[0].forward is other_pack and all("forward" not in b.__dict__ for b in blocks[1:])


def test_guided_passes_follow_comfyuis_vram_mode_and_free_memory(host, monkeypatch, caplog):
    import comfy.model_management as mm

    model = tiny_sd1_patcher().model
    x = torch.zeros(1, 4, 64, 64)
    conds = [object(), object()]
    needed = host.guided_pass_bytes("sd1", 2, 64, 64, 4)  # float32 model: 2 rows at 64 x 64
    assert needed == int(0.125 * 2 * 64 * 64 * 4 * 2**20)
    assert host.guided_pass_bytes("sdxl", 2, 64, 64, 4) > needed
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)
    monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False: needed + 1)
    assert host.guided_pass._batch_guided_pass(None, "sd1", model, x, conds) is True
    monkeypatch.setattr(host.guided_pass, "_split_pass_logged", set())
    with caplog.at_level("INFO", logger="pickdraw"):
        monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False: needed - 1)
        assert host.guided_pass._batch_guided_pass(None, "sd1", model, x, conds) is False
        assert host.guided_pass._batch_guided_pass(None, "sd1", model, x, conds) is False
        assert host.guided_pass._batch_guided_pass(None, "sd1", model, x, [conds[0], None]) is True  # cfg 1: one row
        monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False: 2**50)
        monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)
        assert host.guided_pass._batch_guided_pass(None, "sd1", model, x, conds) is False
        assert host.guided_pass._batch_guided_pass(True, "sd1", model, x, conds) is True
    assert caplog.text.count("GiB free") == 1 and caplog.text.count("low-VRAM mode") == 1


def test_free_memory_is_asked_of_the_model_patcher_where_it_answers(host, monkeypatch):
    """ComfyUI's dynamic-VRAM patcher counts the weights it can stream out as free: its answer decides."""
    import comfy.model_management as mm

    model = tiny_sd1_patcher().model
    x = torch.zeros(1, 4, 64, 64)
    needed = host.guided_pass_bytes("sd1", 2, 64, 64, 4)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)
    monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False: 1)
    asked = []

    class Patcher:
        def get_free_memory(self, device):
            asked.append(device)
            return needed + 1

    monkeypatch.setattr(model, "current_patcher", Patcher(), raising=False)
    assert host.guided_pass._batch_guided_pass(None, "sd1", model, x, [object(), object()]) is True
    assert asked == [x.device]


def test_a_guided_run_splits_its_passes_when_memory_is_short(ops, host, monkeypatch):
    import comfy.model_management as mm

    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    engine, palette, template = _engine_and_stores(ops, host, patcher, steps=3)
    real = mm.get_free_memory
    # only the plain question (the one the pack asks) gets "1 byte free"; ComfyUI's attention asks with torch_free_too
    monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False:
                        real(device, torch_free_too) if torch_free_too else 1)
    guided, run = host.guide_model(patcher, engine, palette, template, 0.5)
    assert run.batched is None
    sample(guided, steps=3, seed=3)
    assert run.batched is False and len(run.log) == 3


def test_step_locator_finds_steps_and_copies_each_schedule_once(host):
    locate = host.StepLocator()
    schedule = torch.tensor([14.6, 7.0, 3.0, 0.0])
    options = {"transformer_options": {"sample_sigmas": schedule}}
    assert locate(torch.tensor([7.0]), options) == (1, 3, 7.0)
    first_copy = locate._on_host
    assert locate(torch.tensor([3.0]), options)[:2] == (2, 3) and locate._on_host is first_copy
    assert locate(torch.tensor([5.0]), {"transformer_options": {"sample_sigmas": torch.tensor([5.0, 1.0, 0.0])}})[:2] == (0, 2)
    with pytest.raises(RuntimeError, match="sample_sigmas"):
        locate(torch.tensor([1.0]), {})


def _device_reads(run) -> int:
    """How many times run() reads a tensor's value back to the host (aten::_local_scalar_dense: on a GPU,
    each one waits for the queued kernels to finish)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountReads(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                CountReads.reads += 1
            return func(*args, **(kwargs or {}))

    with CountReads():
        run()
    return CountReads.reads


def test_a_guided_step_reads_back_only_the_current_sigma(ops, host):
    """A launch-bound guided step must not wait for the GPU in the middle of the step: the only value it reads
    back is the step's sigma (to find the step in the schedule); mask sizes and the log stay on the device
    until the log is read, and then read as plain numbers."""
    patcher = tiny_sd1_patcher()
    engine, palette, template = _engine_and_stores(ops, host, patcher, steps=3)
    guided, run = host.guide_model(patcher, engine, palette, template, 1.0)
    plain_reads = _device_reads(lambda: sample(patcher, steps=3, seed=3))
    guided_reads = _device_reads(lambda: sample(guided, steps=3, seed=3))
    assert guided_reads - plain_reads == 3, (guided_reads, plain_reads)
    entry = run.log[0]
    assert entry["mask_pixels"] and all(type(n) is int and n > 0 for n in entry["mask_pixels"].values()), entry
    assert all(type(entry[key]) is float for key in ("total", "appearance", "layout", "appearance_gradient_rms",
                                                     "layout_gradient_rms")), entry
    assert entry["not_finite"] == 0


def test_guided_sampling_inside_inference_mode_like_comfyui_prompts(ops, host):
    """ComfyUI runs every prompt under torch.inference_mode() and loads weights there."""
    with torch.inference_mode():
        patcher = tiny_sd1_patcher()
        assert next(patcher.model.diffusion_model.parameters()).is_inference()
        engine, palette, template = _engine_and_stores(ops, host, patcher, steps=3)
        guided, run = host.guide_model(patcher, engine, palette, template, 1.0)
        out = sample(guided, steps=3, seed=3)
        assert torch.isfinite(out).all() and len(run.log) == 3
        assert all(entry["total"] > 0 for entry in run.log)
        # A later unguided run of the same MODEL still works and matches a fresh model's output.
        again = sample(patcher, steps=3, seed=3)
        torch.testing.assert_close(again, sample(tiny_sd1_patcher(), steps=3, seed=3))


def test_other_attn2_patches_keep_working_on_every_layer_chained_with_the_recorder(ops, host, caplog):
    """Another pack's attn2 replace (IPAdapter and the like) runs on unwatched layers as before and, on the
    watched ones, after the recorder (it was dropped there, said only in the server log): its output is the
    layer's output and the recorder still records."""
    patcher = tiny_sd1_patcher()
    table = host.layer_table(patcher)
    calls = []

    def other_patch(q, k, v, extra_options):  # e.g. IPAdapter's: attention plus something of its own
        calls.append(extra_options["block"])
        return torch.nn.functional.scaled_dot_product_attention(
            *(t.view(t.shape[0], t.shape[1], extra_options["n_heads"], -1).transpose(1, 2) for t in (q, k, v))
        ).transpose(1, 2).flatten(2) + 0.5

    patched = patcher.clone()
    patched.set_model_attn2_replace(other_patch, "input", 1, 0)   # unwatched below
    patched.set_model_attn2_replace(other_patch, "output", 3)     # watched below (a block-wide key)
    recorder = ops.AttentionRecorder({"output.3.0": ops.LayerCapture(maps=True)}, [2])
    recorder.capture = True
    with caplog.at_level("INFO", logger="pickdraw"):
        guided = host.attach_recorder(patched, recorder, table)
    assert "output.3.0" in caplog.text and "input.1.0" not in caplog.text
    out = sample(guided, steps=1)
    assert sorted(set(calls)) == [("input", 1), ("output", 3)]
    assert "output.3.0" in recorder.maps()
    torch.testing.assert_close(out, sample(patched, steps=1))  # the other pack's output flows on


@pytest.mark.parametrize("chosen_by", ["comfyui", "another pack"])
def test_guided_steps_run_pytorch_attention_where_the_chosen_one_has_no_backward(host, monkeypatch, caplog, chosen_by):
    """Where ComfyUI's attention (Sage, Flash, ...) or another pack's per-model attention override has no backward,
    the guided steps' passes with gradients run PyTorch attention, saying so once, and every other pass keeps the
    chosen one. The chosen one here is an inference-only stand-in that computes PyTorch's attention but refuses
    tensors that need gradients, as a kernel without a backward fails; the result equals a run on PyTorch
    attention throughout."""
    import comfy.ldm.modules.attention as attention
    from comfy_env import guidance_stores

    calls = []

    def attention_without_backward(q, k, v, *args, **kwargs):
        if torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError("this attention kernel has no backward")
        calls.append(q.shape[0])
        return attention.attention_pytorch(q, k, v, *args, **kwargs)

    model = sharpen_cross_attention(tiny_sd1_patcher())
    positive, negative = subject_conditioning("sd1", 0, 64)
    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)
    palette, template = guidance_stores(model, positive, negative, 3, 3, 5.0, 8)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 1.0}

    def run(patcher):
        out, log = host.guided_sample(patcher, host.SamplingSettings(3, 3, 5.0, "euler", "normal", 1.0), positive,
                                      negative, latent, palette, template, host.GuidanceSettings(0.3, **weights),
                                      batched=False)
        return out["samples"], log

    reference, _ = run(model)
    chosen = model.clone()
    if chosen_by == "another pack":
        chosen.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = \
            lambda func, *args, **kwargs: attention_without_backward(*args, **kwargs)
    else:
        monkeypatch.setattr(attention, "optimized_attention", attention.wrap_attn(attention_without_backward))
    monkeypatch.setattr(host.guided_pass, "_attention_swap_logged", set())
    with caplog.at_level("INFO", logger="pickdraw"):
        guided, log = run(chosen)
        run(chosen)
    assert len(log) == 3 and calls, "the passes without gradients (the unconditional rows) keep the chosen attention"
    torch.testing.assert_close(guided, reference, rtol=0, atol=0)
    assert caplog.text.count("no backward pass") == 1 and "PyTorch attention" in caplog.text


def test_sdxl_shaped_models_are_recognised_and_guided(ops, host):
    from comfy_env import sdxl_conditioning, tiny_sdxl_patcher

    patcher = tiny_sdxl_patcher()
    assert host.model_family(patcher) == "sdxl"
    table = host.layer_table(patcher)
    keys = [layer.key for layer in table.layers()]
    # level 1: 1 transformer, level 2: 2 (input and middle), output blocks 0..3 with 2, 2, 1, 1
    # transformer_depth [0, 1, 2] per input block; output blocks 0..5 take [2, 2, 1, 1, 0, 0] from the back.
    assert keys == ["input.3.0", "input.5.0", "input.5.1", "middle.0.0", "middle.0.1", "output.2.0", "output.3.0",
                    "output.4.0", "output.4.1", "output.5.0", "output.5.1"]
    # a 64 x 64 latent: cross-attention at 1/2 (32 x 32 tokens) and full resolution; a 16 x 16 one: only the full
    # resolution has 16 tokens a side
    assert table.default_appearance_layers(64, 64) == ["output.2.0", "output.3.0", "output.4.1", "output.5.1"]
    assert table.default_appearance_layers(16, 16) == ["output.4.1", "output.5.1"]
    import comfy.sample

    latent = torch.zeros(1, 4, 16, 16)
    positive = [[c[0], {**c[1], host.SUBJECT_KEY: {"subject": "dog", "prompt": "a dog", "indices": [2]}}] for c in sdxl_conditioning(1)]

    def run_once(model, steps):
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        return comfy.sample.sample(model, noise, steps, 7.5, "euler", "normal", positive, sdxl_conditioning(2), latent,
                                   seed=0, disable_pbar=True)

    assert attention_census(patcher, run_once) == set(keys)  # ComfyUI runs exactly these layers
    # Template and guided run through the same code as SD1.x.
    template, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(0, 3, 7.5, "euler", "normal"),
                                               positive, sdxl_conditioning(2), {"samples": latent})
    assert template.metadata.model_family == "sdxl" and len(template) == 3 * len(keys)
    settings = host.SamplingSettings(0, 3, 7.5, "euler", "normal", 1.0)
    _, log = host.guided_sample(patcher, settings, positive, sdxl_conditioning(2), {"samples": latent}, None, template,
                                host.GuidanceSettings(0.0, layout_end=1.0))
    assert all(e["layout"] < 1e-5 for e in log), log  # same seed, no guidance: the template's own layout at every step
    out, log = host.guided_sample(patcher, settings, positive, sdxl_conditioning(2), {"samples": latent}, None, template,
                                  host.GuidanceSettings(1.0, layout_end=1.0))
    # Guided, the first step sees the template's own latent. The later ones need not: the direction is scaled to unit
    # RMS, so an energy at its float-rounding floor (the recorded and the guided passes round differently on some
    # CPUs) still moves the latent by the full strength.
    assert torch.isfinite(out["samples"]).all() and len(log) == 3 and log[0]["layout"] < 1e-5, log


def test_guidance_settings_default_to_the_engines_windows_and_weights(ops, host):
    """A guided run from Python and one from the nodes share their defaults with the engine's GuidanceConfig; by
    default the appearance term waits for the first steps, where the subject maps do not yet point at the subject."""
    config = ops.GuidanceConfig()
    defaults = host.GuidanceSettings(1.0).weights()
    assert set(defaults) == {"appearance_weight", "layout_weight", "appearance_start", "appearance_end",
                             "layout_start", "layout_end"}
    for name, value in defaults.items():
        assert getattr(config, name) == pytest.approx(value), name
    assert 0 < defaults["appearance_start"] < defaults["appearance_end"]
    assert defaults["layout_start"] == 0


def test_a_step_whose_gradient_is_not_finite_is_not_applied_and_is_reported(ops, host, caplog, monkeypatch):
    """A NaN in the first step's gradient (as a float16 overflow gives): that step moves nothing, the sample stays
    finite, the log counts it, and guided_sample's report says which step was not guided."""
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    engine, palette, template = _engine_and_stores(ops, host, patcher, steps=3)
    real = host.guidance_direction
    calls = []

    def first_step_nan(terms, x_in):
        direction, raw = real(terms, x_in)
        calls.append(1)
        return (torch.full_like(direction, float("nan")) if len(calls) == 1 else direction), raw

    monkeypatch.setattr(host.guided_step, "guidance_direction", first_step_nan)
    guided, run = host.guide_model(patcher, engine, palette, template, 1.0)
    result = sample(guided, steps=3, seed=3)
    assert torch.isfinite(result).all()
    assert [entry["not_finite"] for entry in run.log] == [1, 0, 0]
    with caplog.at_level("WARNING", logger="pickdraw"):
        host.report_unguided_steps(run.log)
    assert "step(s) 0" in caplog.text


@pytest.mark.parametrize("bad", [{"strength": float("nan")}, {"strength": -1.0}, {"appearance_weight": float("inf")},
                                 {"layout_end": 1.5}, {"latent": float("nan")}, {"palette": float("nan")}])
def test_non_finite_or_out_of_range_guidance_input_is_refused(ops, host, bad):
    patcher = tiny_sd1_patcher()
    engine, palette, template = _engine_and_stores(ops, host, patcher, steps=2)
    positive, negative = subject_conditioning("sd1", 0, 64)
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_end": 0.8, "layout_end": 0.5}
    weights.update({k: v for k, v in bad.items() if k in weights})
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    if "latent" in bad:
        latent["samples"][0, 0, 0, 0] = bad["latent"]
    if "palette" in bad:
        entries = palette.entries()
        palette = ops.Palette(palette.metadata)
        for (index, layer), tensor in entries.items():
            palette.set(index, layer, torch.full_like(tensor, bad["palette"]))
    with pytest.raises(ValueError, match="finite|0 \\(no guidance\\)|fractions"):
        host.guided_sample(patcher, host.SamplingSettings(0, 2, 7.5, "euler", "normal", 1.0), positive, negative,
                           latent, palette, None, host.GuidanceSettings(bad.get("strength", 0.5), **weights))


def test_strength_zero_samples_exactly_as_ksampler_on_pytorch_attention_in_one_pass(host, monkeypatch):
    """Strength 0 (the energies still measured) gives KSampler's latent bitwise where ComfyUI runs PyTorch attention
    (its default on NVIDIA GPUs) and the guided pass is batched, as the README says; the split pass sums the rows
    in another order (rounding only)."""
    import comfy.ldm.modules.attention as attention
    import nodes as comfy_nodes
    from comfy_env import guidance_stores

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)
    model = sharpen_cross_attention(tiny_sd1_patcher())
    positive, negative = subject_conditioning("sd1", 0, 64)
    palette, template = guidance_stores(model, positive, negative, 3, 4, 5.0, 8)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 1.0}
    (plain,) = comfy_nodes.common_ksampler(model, 3, 4, 5.0, "euler", "normal", positive, negative, latent)
    for batched in (True, False):
        out, log = host.guided_sample(model, host.SamplingSettings(3, 4, 5.0, "euler", "normal", 1.0), positive,
                                      negative, latent, palette, template, host.GuidanceSettings(0.0, **weights),
                                      batched=batched)
        assert len(log) == 4 and all(entry["total"] > 0 for entry in log)
        if batched:
            assert torch.equal(out["samples"], plain["samples"])
        else:
            torch.testing.assert_close(out["samples"], plain["samples"], rtol=1e-5, atol=1e-3)
