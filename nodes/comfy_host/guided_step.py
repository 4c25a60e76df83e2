"""The guided step: a clone of the MODEL whose every step runs the conditional rows with gradients, records
their maps and features, asks the engine for the energy, and hands the gradient's direction to ComfyUI's CFG."""

from __future__ import annotations

import comfy.samplers
import torch

from .. import ops
from .family import layer_table, model_family
from .guidance_update import guidance_direction, guidance_displacement
from .guided_pass import (_batch_guided_pass, _control_networks, _controls_added_out_of_place,
                          _feed_forward_blocks, _feed_forwards_recomputed, _make_weights_differentiable, _store_on,
                          guided_pass_options)
from .recording import StepLocator, attach_recorder
from .subject import with_subject_entries
from .template import fingerprints_match, noise_fingerprint


class GuidanceRun:
    """State of one guided sampling run: the step log and the gradient handed from the model call to CFG.

    The log's values stay tensors on the sampling device while sampling (reading them would wait for the
    GPU every step); `log` turns them into numbers when it is read."""

    def __init__(self, strength: float, batched: bool | None):
        self.strength = float(strength)
        self.batched = batched  # None until the first guided step chooses
        self.gradient = None  # the unit guidance direction of the current step, or None when it is not guided
        self.last_guided_step = None
        self.feed_forwards = []  # the blocks the split pass recomputes in the backward (none in the batched pass)
        self._log: list[dict] = []

    @property
    def log(self) -> list[dict]:
        return [{key: _as_number(value) for key, value in entry.items()} for entry in self._log]


def _as_number(value):
    """A step log value as Python numbers: tensors read back (integer ones as int), dicts of them alike."""
    if isinstance(value, dict):
        return {key: _as_number(v) for key, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item() if not value.is_floating_point() else float(value)
    return value


def guide_model(model_patcher, engine, palette, layout_template, strength: float, batched: bool | None = None,
                expected_noise: str | None = None):
    """A clone of the MODEL that applies Pick-and-Draw guidance while it samples, and its run state.

    On a guided step the model runs with gradients (recording maps and features of the conditional rows
    only), the energy's gradient to the latent is taken, and the same outputs, detached, are the predictions
    for ComfyUI's own CFG. After CFG the denoised estimate moves against the energy's gradient (self-guidance in
    k-diffusion's sigma space) by a dimensionless strength: see guidance_direction and guidance_displacement.
    batched: conditional and unconditional rows in one pass
    with gradients (True), the unconditional rows apart without gradients (False), or chosen at the first
    guided step of each run from ComfyUI's VRAM mode and free memory (None). expected_noise: the noise fingerprint
    of the layout template's run; a run whose first step starts elsewhere (other noise or sigmas) is refused.
    """
    table = layer_table(model_patcher)
    recorder = ops.AttentionRecorder(engine.recorder_layers(), list(engine.config.token_indices))
    family = model_family(model_patcher)
    run = GuidanceRun(strength, batched)
    palette = _store_on(palette, model_patcher.load_device)
    layout_template = _store_on(layout_template, model_patcher.load_device)
    patched = attach_recorder(model_patcher, recorder, table)
    locate = StepLocator()

    def calc_cond_batch(args):
        conds, x, sigma, model, options = args["conds"], args["input"], args["sigma"], args["model"], args["model_options"]
        step, steps, sigma_value = locate(sigma, options)
        if step == 0 and expected_noise is not None and not fingerprints_match(noise_fingerprint(x), expected_noise):
            raise ValueError("this run starts from other noise than the layout template's run (its first latent differs): "
                             "give the sampler the template's noise seed, sigmas and latent (with SamplerCustomAdvanced: "
                             "RandomNoise with the template's seed, and its steps and scheduler)")
        options = with_subject_entries(conds, options)
        run.gradient = None
        if not engine.any_active(step, steps):
            return comfy.samplers.calc_cond_batch(model, conds, x, sigma, options)
        with torch.inference_mode(False), torch.enable_grad():
            # ComfyUI loads and patches (LoRA) weights when a sampling run starts, not between its steps
            if run.last_guided_step is None or step <= run.last_guided_step:
                _make_weights_differentiable(model.diffusion_model, *_control_networks(conds))
                run.batched = _batch_guided_pass(batched, family, model, x, conds)
                recorder.recompute_maps = not run.batched  # the split pass is the one that saves memory
                run.feed_forwards = [] if run.batched else _feed_forward_blocks(model)
            run.last_guided_step = step
            x_in = x.detach().clone().requires_grad_(True)
            recorder.clear()
            with_gradients = conds if run.batched else conds[:1]
            # the split pass is the one that saves memory: it recomputes the feed-forward activations too
            with _feed_forwards_recomputed(run.feed_forwards), _controls_added_out_of_place(with_gradients):
                outs = comfy.samplers.calc_cond_batch(model, with_gradients, x_in, sigma.detach().clone(),
                                                      guided_pass_options(options))
            if not recorder.maps():
                # no entry carrying the subject ran at this step (ConditioningSetTimestepRange and the like): the
                # guidance is off here, and guided_sample says so when the run ends
                recorder.clear()
                run._log.append({"step": step, "sigma": sigma_value, "subject_absent": True})
                outs = [out.detach() if out is not None else None for out in outs]
                if not run.batched:
                    with torch.no_grad():
                        outs = outs + comfy.samplers.calc_cond_batch(model, conds[1:], x, sigma, options)
                return outs
            loss = engine.step_loss(recorder, palette, layout_template, sigma_value, step, steps)
            terms = []
            if loss.appearance_on:
                terms.append(("appearance", engine.config.appearance_weight, loss.appearance))
            if loss.layout_on:
                terms.append(("layout", engine.config.layout_weight, loss.layout))
            direction, raw_rms = guidance_direction(terms, x_in)
            recorder.clear()
            outs = [out.detach() if out is not None else None for out in outs]
        # A sample whose gradient is not finite is not moved; the flag stays on the device (reading it here would
        # wait for the GPU) and guided_sample reports such steps when the run ends.
        finite = torch.isfinite(direction).flatten(1).all(1)
        run.gradient = torch.where(finite.view(-1, *([1] * (direction.ndim - 1))), direction, 0.0).detach()
        run._log.append({
            "step": step, "sigma": sigma_value, "total": loss.total.detach().sum(),
            "appearance": loss.appearance.detach().sum() if loss.appearance_on else None,
            "layout": loss.layout.detach().sum() if loss.layout_on else None,
            "mask_pixels": dict(loss.mask_pixels), "palette_sigma_index": loss.palette_sigma_index,
            **{f"{name}_gradient_rms": value for name, value in raw_rms.items()},
            "not_finite": (~finite).sum(),
        })
        if not run.batched:
            with torch.no_grad():
                outs = outs + comfy.samplers.calc_cond_batch(model, conds[1:], x, sigma, options)
        return outs

    def post_cfg(args):
        denoised = args["denoised"]
        if run.gradient is None or run.strength == 0.0:
            return denoised
        return denoised - guidance_displacement(run.strength, args["input"], denoised, run.gradient)

    patched.set_model_sampler_calc_cond_batch_function(calc_cond_batch)
    patched.set_model_sampler_post_cfg_function(post_cfg)
    return patched, run
