"""Guided sampling composed with core ComfyUI nodes that patch the MODEL or build CONDITIONING, on a real ComfyUI
with tiny SD1.x models (skipped without ComfyUI)."""

from __future__ import annotations

import pytest
import torch

from comfy_env import guidance_stores, require_comfyui, sharpen_cross_attention, subject_conditioning, tiny_sd1_patcher


@pytest.fixture(scope="module")
def host():
    return require_comfyui()


@pytest.fixture(scope="module")
def setting(host):
    """A tiny SD1 MODEL loaded as ComfyUI loads prompts' models (under inference mode), its stores and prompts."""
    with torch.inference_mode():
        model = sharpen_cross_attention(tiny_sd1_patcher())
    positive, negative = subject_conditioning("sd1", 0, 64)
    palette, template = guidance_stores(model, positive, negative, 3, 3, 5.0, 8)
    return model, positive, negative, palette, template


def _guided(host, setting, model=None, positive=None, strength=0.3, batched=None):
    base, base_positive, negative, palette, template = setting
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 1.0}
    with torch.inference_mode():  # as ComfyUI executes a prompt
        out, log = host.guided_sample(model or base, host.SamplingSettings(3, 3, 5.0, "euler", "normal", 1.0),
                                      positive or base_positive, negative, {"samples": torch.zeros(1, 4, 8, 8)},
                                      palette, template, host.GuidanceSettings(strength, **weights), batched=batched)
    return out["samples"], log


@pytest.mark.parametrize("batched", [True, False])
def test_freeu_v2_writes_in_place_and_still_composes(host, setting, batched):
    """FreeU V2 scales the hidden states in place in its output-block patch ("one of the variables needed for
    gradient computation has been modified by an inplace operation" before): in the guided passes it takes part,
    its effect passed to the backward as a constant offset."""
    from comfy_extras.nodes_freelunch import FreeU_V2

    (freeu,) = FreeU_V2().patch(setting[0], 1.3, 1.4, 0.9, 0.2)
    guided, log = _guided(host, setting, model=freeu, batched=batched)
    plain_freeu, _ = _guided(host, setting, model=freeu, strength=0.0)
    guided_alone, _ = _guided(host, setting)
    assert torch.isfinite(guided).all() and len(log) == 3
    assert not torch.equal(guided, plain_freeu) and not torch.equal(guided, guided_alone)


def _tiny_controlnet(model):
    """A ControlNet of the tiny UNet's shape with random weights, made as ComfyUI loads one (inference tensors)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = {k: v for k, v in model.model.model_config.unet_config.items() if k not in ("out_channels",)}
    with torch.inference_mode():
        network = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, **config)
        generator = torch.Generator().manual_seed(4)
        for tensor in network.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    assert next(network.parameters()).is_inference()
    return comfy.controlnet.ControlNet(network, load_device=torch.device("cpu"))


@pytest.mark.parametrize("batched", [True, False])
def test_a_controlnet_on_the_positive_composes(host, setting, batched):
    """ControlNet apply on the positive: the guided passes differentiate through the ControlNet, whose weights
    ComfyUI loaded as inference tensors ("Inference tensors cannot be saved for backward" before)."""
    import nodes as comfy_nodes

    model, positive, negative = setting[0], setting[1], setting[2]
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        controlled, _ = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, _tiny_controlnet(model), hint, 1.0, 0.0, 1.0)
    guided, log = _guided(host, setting, positive=controlled, batched=batched)
    uncontrolled, _ = _guided(host, setting)
    assert torch.isfinite(guided).all() and len(log) == 3
    assert not torch.equal(guided, uncontrolled), "the ControlNet took part"


def test_a_timestep_range_on_the_subject_prompt_turns_the_terms_off_where_it_does_not_run(host, setting, caplog):
    """ConditioningSetTimestepRange on the subject's prompt (first half only): the template and the palette hold
    entries for the steps where it ran, the guided run guides there and says where it did not (KeyError
    'input.1.0', KeyError 'output.0.0' and "no features were recorded" before); a pass in which it never ran is
    refused by name."""
    import nodes as comfy_nodes

    from comfy_env import PoolingVae

    model, positive, negative = setting[0], setting[1], setting[2]
    (first_half,) = comfy_nodes.ConditioningSetTimestepRange().set_range(positive, 0.0, 0.5)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with caplog.at_level("INFO", logger="pickdraw"), torch.inference_mode():
        template, _, _ = host.draw_layout_template(model, host.SamplingSettings(3, 6, 5.0, "euler", "normal"),
                                                   first_half, negative, latent)
        palette, _, _ = host.pick_palette(model, PoolingVae(), torch.rand(1, 64, 64, 3), first_half, 6, "normal")
        weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 1.0}
        out, log = host.guided_sample(model, host.SamplingSettings(3, 6, 5.0, "euler", "normal", 1.0), first_half,
                                      negative, latent, palette, template, host.GuidanceSettings(0.3, **weights))
    assert 0 < len(template.metadata.sigmas) < 6 and 0 < len(palette.metadata.sigmas) < 6
    absent = [entry["step"] for entry in log if entry.get("subject_absent")]
    guided = [entry["step"] for entry in log if not entry.get("subject_absent")]
    assert guided and absent and max(guided) < min(absent), (guided, absent)
    assert torch.isfinite(out["samples"]).all()
    assert "the layout template holds no entry there" in caplog.text and "the guidance was off there" in caplog.text
    with pytest.raises(ValueError, match="did not run at any step of the layout template"):
        host.recording._report_absent_subject("layout template", [0, 1, 2], 3)


def test_every_core_model_patch_and_conditioning_node_composes_or_is_refused_by_name(host):
    """The composition matrix: every core node (nodes.py and comfy_extras, enumerated from the registered nodes, so
    a new one is covered) that patches a MODEL or builds CONDITIONING, through the three sampling stages. Where the
    plain KSampler works with the node's output, each stage works or refuses with a ValueError naming the fix; a
    node that needs a downloaded input (a ControlNet, CLIP-vision or style model, a LoRA file) is listed as such
    (the ControlNet and LoRA paths have their own tests with stand-ins)."""
    from composition_matrix import matrix

    rows = matrix()
    for name, row in rows.items():
        print(name, row)
    built = {name: row for name, row in rows.items() if row["built"] == "yes"}
    assert len(built) >= 10 and {"ConditioningCombine", "ConditioningSetTimestepRange"} <= set(built)
    broken = {name: {stage: outcome for stage, outcome in row.items() if outcome.startswith("fails")}
              for name, row in built.items() if row["KSampler"] == "works"}
    assert not any(broken.values()), {name: stages for name, stages in broken.items() if stages}
    # the rest are listed with why: a downloaded input they need, an explicit exclusion, or the node's own failure on
    # the stand-ins (video and other families' conditioning nodes that SD1 inputs do not fit)
    unbuilt = {name: row["built"] for name, row in rows.items() if row["built"] != "yes"}
    assert all(reason.startswith(("needs a ", "excluded: ", "the node itself fails")) for reason in unbuilt.values()), unbuilt


def test_an_attention_output_patch_that_writes_in_place_composes(host, setting):
    """An attn1 output patch that overwrites part of the attention output in place (as NAG's does): the guided
    passes give it a copy, and its effect reaches the result."""
    def normalise_first_rows(out, extra_options):  # its backward needs the rows it overwrites
        out[:, :4] = out[:, :4] / out[:, :4].norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return out

    patched = setting[0].clone()
    patched.set_model_attn1_output_patch(normalise_first_rows)
    guided, log = _guided(host, setting, model=patched)
    assert torch.isfinite(guided).all() and len(log) == 3
    assert not torch.equal(guided, _guided(host, setting)[0])
