"""Subject Prompt and Guided KSampler nodes in real ComfyUI with tiny SD1.x models (skipped without ComfyUI)."""

from __future__ import annotations

import types

import pytest
import torch

from comfy_env import PoolingVae, require_comfyui, sharpen_cross_attention, tiny_clip, tiny_sd1_patcher
from tiny_models import store_metadata


@pytest.fixture(scope="module")
def env():
    host = require_comfyui()
    import importlib

    from conftest import PACK_NAME

    prompt_nodes = importlib.import_module(f"{PACK_NAME}.nodes.prompt_nodes")
    guidance_nodes = importlib.import_module(f"{PACK_NAME}.nodes.guidance_nodes")
    template_nodes = importlib.import_module(f"{PACK_NAME}.nodes.template_nodes")
    return types.SimpleNamespace(host=host, subject_prompt=prompt_nodes.SubjectPrompt, guided=guidance_nodes.GuidedKSampler,
                                 draw=template_nodes.DrawLayoutTemplate, clip=tiny_clip())


def test_subject_tokens_are_found_and_travel_with_the_conditioning(env):
    host, subject_prompt, clip = env.host, env.subject_prompt, env.clip
    (cond,) = subject_prompt.execute(clip=clip, text="a photo of a sks dog on the beach", subject="sks dog").result
    info = cond[0][1][host.SUBJECT_KEY]
    # <start> a photo of a sks dog ...: "sks" and "dog" are tokens 5 and 6 (one token each here).
    assert info["indices"] == [5, 6] and info["subject"] == "sks dog"
    assert cond[0][0].shape == (1, 77, 64)
    # ComfyUI's conditioning nodes keep the dict entries (here: Combine, then ControlNet-style copies).
    import nodes as comfy_nodes

    (combined,) = comfy_nodes.ConditioningCombine().combine(cond, cond)
    assert host.subject_of(combined)["indices"] == [5, 6]


def test_a_missing_subject_lists_the_prompt_tokens(env):
    subject_prompt, clip = env.subject_prompt, env.clip
    with pytest.raises(ValueError, match=r"'cat' is not in the prompt; the prompt's tokens are: .*dog"):
        subject_prompt.execute(clip=clip, text="a photo of a dog", subject="cat")
    with pytest.raises(ValueError, match="subject is empty"):
        subject_prompt.execute(clip=clip, text="a photo of a dog", subject="  ")


def _stores(ops, host, patcher, clip, steps, seed=3):
    """Template by the Draw Layout Template node (same seed as the guided runs below), palette from a
    'reference' run through the capture helper."""
    import comfy.samplers
    import comfy.sample

    table = host.layer_table(patcher)
    config = ops.GuidanceConfig()
    config.appearance_layers = table.default_appearance_layers(16, 16)  # the latent below
    config.layout_layers = table.default_layout_layers()
    config.token_indices = [5]
    engine = ops.GuidanceEngine(config)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", steps)[:-1]
    palette = ops.Palette(store_metadata(ops, config.appearance_layers, sigmas))
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a dog"))
    latent = torch.zeros(1, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(9))
    comfy.sample.sample(host.capture_each_step(patcher, engine, lambda i, n, s, r: engine.record_palette_entry(r, palette, i)),
                        noise, steps, 7.5, "euler", "normal", cond, cond, latent, seed=9, disable_pbar=True)
    template, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(seed, steps, 7.5, "euler", "normal"),
                                               *_prompts(host, clip), {"samples": latent})
    return palette, template


def _prompts(host, clip):
    positive = host.with_subject(clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a dog")),
                                 host.subject_tokens(clip, "a photo of a dog", "dog"))
    return positive, clip.encode_from_tokens_scheduled(clip.tokenize(""))


def test_guided_ksampler_runs_and_differs_from_plain_sampling(ops, env):
    host, subject_prompt, guided_ksampler, clip = env.host, env.subject_prompt, env.guided, env.clip
    import nodes as comfy_nodes

    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    palette, template = _stores(ops, host, patcher, clip, steps=4)
    (positive,) = subject_prompt.execute(clip=clip, text="a photo of a dog", subject="dog").result
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    common = dict(model=patcher, seed=3, steps=4, cfg=7.5, sampler_name="euler", scheduler="normal", positive=positive,
                  negative=negative, latent_image=latent, denoise=1.0, appearance_weight=1.0, layout_weight=1.0,
                  appearance_end=0.8, layout_end=0.5, palette=palette, layout_template=template)
    (plain,) = comfy_nodes.common_ksampler(patcher, 3, 4, 7.5, "euler", "normal", positive, negative, latent)
    (unguided,) = guided_ksampler.execute(**common, strength=0.0).result
    (guided,) = guided_ksampler.execute(**common, strength=0.5).result
    # Strength 0 runs the guided code path (cond and uncond in separate calls) and must match KSampler.
    torch.testing.assert_close(unguided["samples"], plain["samples"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(guided["samples"], plain["samples"], rtol=1e-3, atol=1e-3)
    assert torch.isfinite(guided["samples"]).all()


def test_guided_ksampler_explains_bad_inputs(ops, env):
    host, subject_prompt, guided_ksampler, clip = env.host, env.subject_prompt, env.guided, env.clip
    patcher = tiny_sd1_patcher()
    (positive,) = subject_prompt.execute(clip=clip, text="a photo of a dog", subject="dog").result
    plain_positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a dog"))
    common = dict(model=patcher, seed=0, steps=2, cfg=7.5, sampler_name="euler", scheduler="normal", negative=positive,
                  latent_image={"samples": torch.zeros(1, 4, 16, 16)}, denoise=1.0, appearance_weight=1.0,
                  layout_weight=1.0, appearance_end=0.8, layout_end=0.5, strength=1.0)
    with pytest.raises(ValueError, match="connect a palette, a layout template, or both"):
        guided_ksampler.execute(positive=positive, **common)
    m = store_metadata(ops, ["output.0.0"], [14.0, 1.0])
    m.model_family = "sdxl"
    palette = ops.Palette(m)
    for i in range(2):
        palette.set(i, "output.0.0", torch.randn(4, 64))
    with pytest.raises(ValueError, match="recorded with a sdxl model but this MODEL is sd1"):
        guided_ksampler.execute(positive=positive, palette=palette, **common)
    with pytest.raises(ValueError, match="carries no Pick-and-Draw subject"):
        guided_ksampler.execute(positive=plain_positive, palette=palette, **common)


def test_draw_layout_template_records_every_step_and_keeps_the_sample(ops, env):
    host, clip = env.host, env.clip
    import nodes as comfy_nodes

    patcher = tiny_sd1_patcher()
    positive, negative = _prompts(host, clip)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    template, out, preview = env.draw.execute(model=patcher, positive=positive, negative=negative, latent_image=latent,
                                                   seed=5, steps=3, cfg=7.5, sampler_name="euler", scheduler="normal",
                                                   denoise=1.0).result
    assert len(template.metadata.sigmas) == 3 and len(template) == 3 * 7
    assert template.metadata.extra["seed"] == "5" and template.metadata.extra["latent_size"] == "16x16"
    assert template.metadata.tokens.indices == [5]
    (plain,) = comfy_nodes.common_ksampler(patcher, 5, 3, 7.5, "euler", "normal", positive, negative, latent)
    # recording does not change the sample (the recorder's fused attention and ComfyUI's CPU attention, a split
    # softmax, round differently in the last bits)
    torch.testing.assert_close(out["samples"], plain["samples"], rtol=1e-4, atol=1e-4)
    assert preview.shape == (1, 128, 128, 3) and float(preview.min()) >= 0 and float(preview.max()) <= 1


def test_a_template_reproduces_its_own_layout_and_refuses_other_seeds(ops, env):
    host, clip = env.host, env.clip
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    palette, template = _stores(ops, host, patcher, clip, steps=4, seed=3)
    positive, negative = _prompts(host, clip)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 1.0}
    _, log = host.guided_sample(patcher, host.SamplingSettings(3, 4, 7.5, "euler", "normal", 1.0), positive,
                                negative, latent, None, template, host.GuidanceSettings(0.0, **weights))
    assert all(entry["layout"] < 1e-5 for entry in log), log  # same seed, no guidance: the template's own layout
    with pytest.raises(ValueError, match="drawn with another seed 3 vs 4"):
        host.guided_sample(patcher, host.SamplingSettings(4, 4, 7.5, "euler", "normal", 1.0), positive, negative,
                           latent, None, template, host.GuidanceSettings(1.0, **weights))


def test_pick_palette_inverts_the_reference_and_keeps_subject_features(ops, env):
    import importlib

    from conftest import PACK_NAME

    pick = importlib.import_module(f"{PACK_NAME}.nodes.palette_nodes").PickPalette
    host, clip = env.host, env.clip
    patcher = tiny_sd1_patcher()
    positive, _ = _prompts(host, clip)
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(4))
    palette, overlay, token_map = pick.execute(model=patcher, vae=PoolingVae(), image=image, positive=positive,
                                               steps=4, scheduler="normal", tau=0.5).result
    assert len(palette.metadata.sigmas) == 4 and palette.metadata.sigmas == sorted(palette.metadata.sigmas)
    assert palette.metadata.extra["mask"] == "saliency" and palette.metadata.image_height == 128
    # a 128 px picture, a 16 x 16 latent: the appearance layers are the decoder's full-resolution ones (16 x 16 tokens)
    table = host.layer_table(patcher)
    assert list(palette.metadata.layer_keys) == table.default_appearance_layers(16, 16)
    for i in range(4):
        for layer in palette.metadata.layer_keys:
            entry = palette.get(i, layer)
            assert table.token_grid(layer, 16, 16) == [16, 16]
            assert 4 <= entry.shape[0] < 256 and entry.shape[1] == table.layer(layer).channels  # masked subset
    assert overlay.shape == (1, 128, 128, 3) and token_map.shape == (1, 128, 128, 3)
    # A user mask replaces the saliency mask: the left half of the image.
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1
    masked, _, _ = pick.execute(model=patcher, vae=PoolingVae(), image=image, positive=positive, steps=4,
                                scheduler="normal", tau=0.5, mask=mask).result
    assert masked.metadata.extra["mask"] == "user"
    assert all(masked.get(0, layer).shape[0] == 128 for layer in masked.metadata.layer_keys)  # half of 16 x 16
    with pytest.raises(ValueError, match="multiples of 8"):
        pick.execute(model=patcher, vae=PoolingVae(), image=image[:, :100], positive=positive, steps=4,
                     scheduler="normal", tau=0.5)


def test_pick_draw_and_guided_sampling_end_to_end(ops, env):
    """Reference image -> palette, vanilla run -> template, guided run with both, as the nodes chain them."""
    host, clip = env.host, env.clip
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    positive, negative = _prompts(host, clip)
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(4))
    palette, _, _ = host.pick_palette(patcher, PoolingVae(), image, positive, 4, "normal")
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    template, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(7, 4, 7.5, "euler", "normal"),
                                               positive, negative, latent)
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 0.5}
    out, log = host.guided_sample(patcher, host.SamplingSettings(7, 4, 7.5, "euler", "normal", 1.0), positive,
                                  negative, latent, palette, template, host.GuidanceSettings(0.5, **weights))
    assert torch.isfinite(out["samples"]).all()
    assert [entry["layout"] is not None for entry in log] == [True, True, False, False]
    assert all(entry["appearance"] is not None and entry["appearance"] > 0 for entry in log)
    # The guided schedule's sigmas are the palette's (same scheduler and steps), in the other order.
    assert [entry["palette_sigma_index"] for entry in log] == [3, 2, 1, 0]


def test_the_guider_samples_like_the_guided_ksampler(ops, env):
    """SamplerCustomAdvanced with the guider equals the Guided KSampler for the same noise and sigmas."""
    import importlib

    import comfy.sample
    import comfy.samplers

    from conftest import PACK_NAME

    guider_node = importlib.import_module(f"{PACK_NAME}.nodes.guidance_nodes").PickAndDrawGuider
    host, clip = env.host, env.clip
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    palette, template = _stores(ops, host, patcher, clip, steps=4, seed=3)
    positive, negative = _prompts(host, clip)
    knobs = dict(appearance_weight=1.0, layout_weight=1.0, appearance_end=0.8, layout_end=0.5, strength=0.5,
                 palette=palette, layout_template=template)
    (guider,) = guider_node.execute(model=patcher, positive=positive, negative=negative, cfg=7.5, **knobs).result
    latent = torch.zeros(1, 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent, 3)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", 4)
    custom = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=3, disable_pbar=True)
    (ksampled,) = env.guided.execute(model=patcher, seed=3, steps=4, cfg=7.5, sampler_name="euler", scheduler="normal",
                                     positive=positive, negative=negative, latent_image={"samples": latent}, denoise=1.0,
                                     **knobs).result
    torch.testing.assert_close(custom, ksampled["samples"], rtol=1e-4, atol=1e-4)
    # other noise than the template's (another RandomNoise seed): refused at the first step, naming the fix
    with pytest.raises(ValueError, match="other noise than the layout template's.*RandomNoise"):
        guider.sample(comfy.sample.prepare_noise(latent, 4), latent, comfy.samplers.sampler_object("euler"), sigmas,
                      seed=4, disable_pbar=True)
    assert host.fingerprints_match(template.metadata.extra["noise"], template.metadata.extra["noise"])
    # a batch drawn from the same seed starts with the same sample: a one-sample template fits it
    one, batch = comfy.sample.prepare_noise(latent, 3), comfy.sample.prepare_noise(torch.zeros(2, 4, 16, 16), 3)
    assert host.noise_fingerprint(batch) == host.noise_fingerprint(one) != host.noise_fingerprint(noise.flip(2))


def _run_long_node(env, which: str, hook) -> None:
    """Runs the host function behind a long node (Pick Palette, Draw Layout Template, Guided KSampler; 4 steps)
    with `hook` as ComfyUI's progress hook."""
    import comfy.utils

    host, clip = env.host, env.clip
    patcher = tiny_sd1_patcher()
    positive, negative = _prompts(host, clip)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    if which == "guided":
        template, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(1, 4, 7.5, "euler", "normal"),
                                                   positive, negative, latent)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        if which == "pick":
            host.pick_palette(patcher, PoolingVae(), torch.rand(1, 128, 128, 3), positive, 4, "normal")
        elif which == "draw":
            host.draw_layout_template(patcher, host.SamplingSettings(1, 4, 7.5, "euler", "normal"), positive,
                                      negative, latent)
        else:
            host.guided_sample(patcher, host.SamplingSettings(1, 4, 7.5, "euler", "normal", 1.0), positive, negative,
                               latent, None, template, host.GuidanceSettings(1.0, layout_end=1.0))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)


@pytest.fixture
def every_update_reaches_the_hook(monkeypatch):
    """ComfyUI's progress bar without its throttle, where it has one (newer ComfyUI passes an update to the hook
    only if 0.1 s and 0.5 % have passed since the last, besides the first, the last and those with a preview):
    the hook then sees every update that the node makes."""
    import comfy.utils

    for name in ("PROGRESS_THROTTLE_MIN_INTERVAL", "PROGRESS_THROTTLE_MIN_PERCENT"):
        if hasattr(comfy.utils, name):
            monkeypatch.setattr(comfy.utils, name, 0)


@pytest.mark.parametrize("which", ["pick", "draw", "guided"])
def test_long_nodes_report_progress_every_step_and_stop_on_cancel(ops, env, which, every_update_reaches_the_hook):
    """ComfyUI's Cancel raises from its progress hook; each long node must call it every step."""
    import comfy.model_management

    calls = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        calls.append(value)
        if len(calls) == 2:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        _run_long_node(env, which, hook)
    assert calls == [1, 2]


@pytest.mark.parametrize("which", ["pick", "draw", "guided"])
def test_a_cancel_during_a_step_stops_the_long_node_before_the_next_step_ends(ops, env, which):
    """Cancel as the server does it, with ComfyUI's progress bar as it is: Cancel sets the interrupt flag and
    ComfyUI raises where it checks it (its progress hook; newer ComfyUI also before every layer, as its throttled
    hook may skip steps). Cancelled in step 1, the node must stop before step 2 is reported done."""
    import comfy.model_management

    calls = []

    def hook(value, total, preview, prompt_id=None, node_id=None):  # the server's hook: it raises once cancelled
        comfy.model_management.throw_exception_if_processing_interrupted()
        calls.append(value)
        if value == 1:
            comfy.model_management.interrupt_current_processing(True)  # the user clicks Cancel

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _run_long_node(env, which, hook)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert calls == [1]


@pytest.mark.parametrize("which", ["pick", "draw", "guided"])
def test_long_nodes_count_their_steps_to_100_percent(ops, env, which, every_update_reaches_the_hook):
    """The progress bar counts 1..steps of steps (the inversion samples ascending sigmas with no final 0, for
    which ComfyUI's sampler wrapper would count one step too few)."""
    calls = []
    _run_long_node(env, which, lambda value, total, preview, prompt_id=None, node_id=None: calls.append((value, total)))
    assert calls == [(step, 4) for step in range(1, 5)]


@pytest.mark.parametrize("case", ["cfg 1", "batch 2", "denoise 0.6", "noise mask"])
def test_guided_sampling_in_the_host_cases(ops, env, case):
    """cfg 1 (ComfyUI drops the unconditional pass), a batch of 2, img2img with denoise < 1 and an inpainting
    noise mask: the guided run completes, the terms are on, and with strength 0 it equals KSampler."""
    import nodes as comfy_nodes

    host, clip = env.host, env.clip
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    positive, negative = _prompts(host, clip)
    batch = 2 if case == "batch 2" else 1
    cfg = 1.0 if case == "cfg 1" else 7.5
    denoise = 0.6 if case == "denoise 0.6" else 1.0
    latent = {"samples": torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(1)) if denoise < 1 else torch.zeros(batch, 4, 16, 16)}
    if case == "noise mask":
        latent["noise_mask"] = torch.zeros(1, 1, 128, 128)
        latent["noise_mask"][..., 32:96, 32:96] = 1
    template, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(3, 4, cfg, "euler", "normal", denoise),
                                               positive, negative, latent)
    assert template.get(0, "output.3.0").shape[0] == batch
    weights = {"layout_end": 1.0}
    out, log = host.guided_sample(patcher, host.SamplingSettings(3, 4, cfg, "euler", "normal", denoise), positive,
                                  negative, latent, None, template, host.GuidanceSettings(0.5, **weights))
    assert torch.isfinite(out["samples"]).all() and out["samples"].shape == latent["samples"].shape
    assert len(log) >= 1 and all(entry["layout"] is not None for entry in log)
    unguided, _ = host.guided_sample(patcher, host.SamplingSettings(3, 4, cfg, "euler", "normal", denoise), positive,
                                     negative, latent, None, template, host.GuidanceSettings(0.0, **weights))
    (plain,) = comfy_nodes.common_ksampler(patcher, 3, 4, cfg, "euler", "normal", positive, negative, latent, denoise=denoise)
    torch.testing.assert_close(unguided["samples"], plain["samples"], rtol=1e-4, atol=1e-4)


def test_lora_patches_and_later_runs_are_unharmed_by_guided_sampling(ops, env):
    """Guided sampling replaces inference-mode weights by ordinary tensors; a LoRA-style weight patch must still
    apply and be removed as before, and the base model must not keep it."""
    import nodes as comfy_nodes

    host, clip = env.host, env.clip
    positive, negative = _prompts(host, clip)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def plain(model):
        return comfy_nodes.common_ksampler(model, 3, 3, 7.5, "euler", "normal", positive, negative, latent)[0]["samples"]

    with torch.inference_mode():
        base = tiny_sd1_patcher()
        key = "diffusion_model.out.2.weight"
        lora = base.clone()
        lora.add_patches({key: (torch.full(base.model.state_dict()[key].shape, 0.02),)}, 1.0)
        with_lora_before = plain(lora)
        template, _, _ = host.draw_layout_template(lora, host.SamplingSettings(3, 3, 7.5, "euler", "normal"),
                                                   positive, negative, latent)
        host.guided_sample(lora, host.SamplingSettings(3, 3, 7.5, "euler", "normal", 1.0), positive, negative,
                           latent, None, template, host.GuidanceSettings(0.5, layout_end=1.0))
        torch.testing.assert_close(plain(lora), with_lora_before)
        lora.unpatch_model()
        torch.testing.assert_close(plain(base), plain(tiny_sd1_patcher()))
        assert not torch.allclose(with_lora_before, plain(base))


def test_subject_tokens_survive_comfyuis_conditioning_nodes(env):
    """Concat, area, mask, timestep range and ControlNet-style copies keep the conditioning dict entries."""
    import nodes as comfy_nodes

    host, clip = env.host, env.clip
    positive, _ = _prompts(host, clip)
    other = clip.encode_from_tokens_scheduled(clip.tokenize("a sunny beach"))
    chains = {
        "concat": comfy_nodes.ConditioningConcat().concat(positive, other)[0],
        "area": comfy_nodes.ConditioningSetArea().append(positive, 64, 64, 0, 0, 1.0)[0],
        "mask": comfy_nodes.ConditioningSetMask().append(positive, torch.ones(1, 16, 16), "default", 1.0)[0],
        "timestep range": comfy_nodes.ConditioningSetTimestepRange().set_range(positive, 0.0, 0.5)[0],
        "combine": comfy_nodes.ConditioningCombine().combine(other, positive)[0],
    }
    for name, conditioning in chains.items():
        assert host.subject_of(conditioning)["indices"] == [5], name
    # ControlNet apply: the graph's own node, with a stand-in for the ControlNet object (no ControlNet weights
    # here); it copies each entry's dict and adds the control to it.
    class StandInControlNet:
        def copy(self):
            return StandInControlNet()

        def set_cond_hint(self, *args, **kwargs):
            return self

        def set_previous_controlnet(self, previous):
            return self

    controlled, _ = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, other, StandInControlNet(), torch.zeros(1, 64, 64, 3), 1.0, 0.0, 1.0)
    assert isinstance(controlled[0][1]["control"], StandInControlNet)
    assert host.subject_of(controlled)["indices"] == [5]
    # Concat keeps the dict of its first input only: with the subject prompt appended, the positions are not
    # carried and the sampler says so, instead of guiding the wrong tokens.
    appended = comfy_nodes.ConditioningConcat().concat(other, positive)[0]
    with pytest.raises(ValueError, match="carries no Pick-and-Draw subject.*conditioning_to"):
        host.subject_of(appended)


def test_a_textual_inversion_embedding_is_found_as_the_subject(env, tmp_path):
    """'embedding:name' tokenizes to the embedding's vectors; they are matched as the subject's positions."""
    from safetensors.torch import save_file

    from comfy_env import tiny_clip

    save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "my_cat.safetensors"))  # 2 vectors, CLIP-L width
    clip = tiny_clip(embedding_directory=str(tmp_path))
    info = env.host.subject_tokens(clip, "a photo of embedding:my_cat on a sofa", "embedding:my_cat")
    assert info["indices"] == [4, 5]  # <start> a photo of [v1 v2] on a sofa
    with pytest.raises(ValueError, match="not in the prompt"):
        env.host.subject_tokens(clip, "a photo of a cat on a sofa", "embedding:my_cat")


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "split"])
def test_guided_sampling_with_weights_cast_per_layer_as_in_lowvram(ops, env, batched):
    """In lowvram/partial loading ComfyUI keeps weights offloaded and casts them in each layer's forward
    (comfy_cast_weights). On this CPU-only machine nothing is offloaded, but the per-layer cast path itself is
    forced here, inside inference mode, for the template and the guided run, in both passes (the split one,
    which low-VRAM modes choose, recomputes feed-forward blocks and so casts their weights again)."""
    import nodes as comfy_nodes

    host, clip = env.host, env.clip
    positive, negative = _prompts(host, clip)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    with torch.inference_mode():
        patcher = tiny_sd1_patcher()
        cast = [m for m in patcher.model.diffusion_model.modules() if hasattr(m, "comfy_cast_weights")]
        assert cast
        for m in cast:
            m.comfy_cast_weights = True
        template, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(3, 3, 7.5, "euler", "normal"),
                                                   positive, negative, latent)
        out, log = host.guided_sample(patcher, host.SamplingSettings(3, 3, 7.5, "euler", "normal", 1.0), positive,
                                      negative, latent, None, template, host.GuidanceSettings(0.0, layout_end=1.0),
                                      batched=batched)
        (plain,) = comfy_nodes.common_ksampler(patcher, 3, 3, 7.5, "euler", "normal", positive, negative, latent)
    assert len(log) == 3
    torch.testing.assert_close(out["samples"], plain["samples"], rtol=1e-4, atol=1e-4)


def test_a_combined_conditioning_records_the_subjects_prompt_only(env):
    """Combine(another prompt, the subject prompt): ComfyUI runs both entries; the template holds the subject
    prompt's maps only. The first step's latent is the same noise either way, so its maps equal those of the
    subject prompt alone (another prompt's maps at the same token positions would change them, or double the rows)."""
    import nodes as comfy_nodes

    host, clip = env.host, env.clip
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    positive, negative = _prompts(host, clip)
    other = clip.encode_from_tokens_scheduled(clip.tokenize("a red car in the snow at night"))
    (combined,) = comfy_nodes.ConditioningCombine().combine(other, positive)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    alone, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(5, 3, 7.5, "euler", "normal"), positive,
                                            negative, latent)
    mixed, _, _ = host.draw_layout_template(patcher, host.SamplingSettings(5, 3, 7.5, "euler", "normal"), combined,
                                            negative, latent)
    for layer in alone.metadata.layer_keys:
        assert mixed.get(0, layer).shape == alone.get(0, layer).shape, layer
        torch.testing.assert_close(mixed.get(0, layer), alone.get(0, layer), msg=layer)
    # the flag mapping itself: a conditional chunk of another entry is read as unconditional
    options = {"cond_or_uncond": [0, 0, 1], "uuids": ["other", "subject", "negative"],
               "pickdraw_subject_entries": ("subject",)}
    assert host.recorded_chunks(options) == [1, 0, 1]
    assert host.recorded_chunks({"cond_or_uncond": [0, 1]}) == [0, 1]


def test_mismatches_are_named(env, caplog):
    """A palette picked along another schedule is said with both schedules; Draw Layout Template with denoise 0
    names denoise; the missing-subject error lists the prompt's tokens up to its end token, not the padding."""
    from comfy_env import PoolingVae

    host, clip = env.host, env.clip
    patcher = sharpen_cross_attention(tiny_sd1_patcher())
    positive, negative = _prompts(host, clip)
    palette, _, _ = host.pick_palette(patcher, PoolingVae(), torch.rand(1, 64, 64, 3), positive, 6, "normal")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with caplog.at_level("WARNING", logger="pickdraw"):
        host.guided_sample(patcher, host.SamplingSettings(1, 6, 5.0, "euler", "normal", 1.0), positive, negative,
                           latent, palette, None, host.GuidanceSettings(0.3))
        assert "palette was picked" not in caplog.text
        host.guided_sample(patcher, host.SamplingSettings(1, 3, 5.0, "euler", "karras", 1.0), positive, negative,
                           latent, palette, None, host.GuidanceSettings(0.3))
    assert "along 6 steps of the 'normal' schedule and this run samples 3 steps of 'karras'" in caplog.text
    with pytest.raises(ValueError, match="denoise is 0"):
        host.draw_layout_template(patcher, host.SamplingSettings(1, 3, 5.0, "euler", "normal", 0.0), positive,
                                  negative, latent)
    with pytest.raises(ValueError, match="is not in the prompt") as error:
        host.subject_tokens(clip, "a photo of a dog", "cat")
    assert str(error.value).count("endoftext") == 1 and len(str(error.value)) < 200, str(error.value)
