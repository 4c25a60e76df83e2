"""The host adapter: the only module besides the node files that touches ComfyUI's model and patch APIs.

It translates ComfyUI objects into the native library's terms (layer tables, recorder callbacks) and
back. The native library never sees ComfyUI: it gets tensors, layer keys and token indices.
"""

from __future__ import annotations

import contextlib
import logging
import math

import comfy.ldm.modules.attention
import comfy.samplers
import comfy.supported_models as supported_models
import comfy.utils
import torch
import torch.utils.checkpoint

from . import ops

logger = logging.getLogger("pickdraw")

# Config classes whose UNet cross-attention the method is defined on, most specific first.
_FAMILIES = (
    (supported_models.SDXL, "sdxl"),
    (supported_models.SD20, "sd2"),
    (supported_models.SD15, "sd1"),
)


def model_family(model_patcher) -> str:
    """'sd1', 'sd2' or 'sdxl' for a ComfyUI MODEL; ValueError naming the model otherwise."""
    config = model_patcher.model.model_config
    for cls, family in _FAMILIES:
        if isinstance(config, cls):
            return family
    raise ValueError(
        f"Pick-and-Draw works on SD1.x, SD2.x and SDXL UNets; this MODEL is {type(config).__name__}, "
        "whose architecture has no UNet cross-attention to guide"
    )


def unet_layout(model_patcher) -> ops.UNetLayout:
    """The UNet's cross-attention placement, read from the model's own unet_config."""
    family = model_family(model_patcher)
    config = model_patcher.model.model_config.unet_config
    try:
        res_blocks = config["num_res_blocks"]
        res_blocks = list(res_blocks) if isinstance(res_blocks, (list, tuple)) else [res_blocks] * len(config["channel_mult"])
        if len(set(res_blocks)) != 1:
            raise ValueError(f"per-level num_res_blocks {res_blocks} differ")
        middle = config.get("transformer_depth_middle")
        if middle is None:  # ComfyUI's UNetModel default: the deepest level's depth
            middle = config["transformer_depth"][-1]
        layout = ops.UNetLayout()
        layout.family = family
        layout.model_channels = int(config["model_channels"])
        layout.channel_mult = [int(c) for c in config["channel_mult"]]
        layout.num_res_blocks = int(res_blocks[0])
        layout.transformer_depth = [int(d) for d in config["transformer_depth"]]
        layout.transformer_depth_middle = max(int(middle), 0)  # -1: no transformer, -2: no middle block
        layout.transformer_depth_output = [int(d) for d in config["transformer_depth_output"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read the UNet layout of this MODEL from its unet_config ({exc!r})") from exc
    return layout


def layer_table(model_patcher) -> ops.ModelLayerTable:
    return ops.ModelLayerTable(unet_layout(model_patcher))


# Key in transformer_options under which the sampling wrappers name the positive conditioning entries that carry
# the subject (by ComfyUI's per-entry uuid); a tuple, since ComfyUI's option merge extends lists.
_SUBJECT_ENTRIES = "pickdraw_subject_entries"


def with_subject_entries(conds, model_options: dict) -> dict:
    """model_options whose transformer_options name the positive entries that carry the subject, so that a
    conditioning combined from several prompts records maps and features of the subject's prompt only (as they
    are when no entry carries it: an engine given the token positions directly)."""
    positive = conds[0] if conds and conds[0] is not None else []
    entries = tuple(c.get("uuid") for c in positive if SUBJECT_KEY in c)
    if not entries or None in entries:  # no subject entry, or a ComfyUI that does not name its entries
        return model_options
    transformer_options = {**model_options.get("transformer_options", {}), _SUBJECT_ENTRIES: entries}
    return {**model_options, "transformer_options": transformer_options}


def recorded_chunks(extra_options: dict) -> list[int]:
    """cond_or_uncond as the recorder reads it (0: record these rows): a conditional chunk of another prompt (the
    other input of a Combine) is marked like an unconditional one. Without the uuids (a caller that is not one of
    our sampling wrappers) every conditional chunk records."""
    flags = [int(flag) for flag in extra_options["cond_or_uncond"]]
    entries, uuids = extra_options.get(_SUBJECT_ENTRIES), extra_options.get("uuids")
    if entries is None or uuids is None or len(uuids) != len(flags):
        return flags
    return [0 if flag == 0 and uuid in entries else 1 for flag, uuid in zip(flags, uuids)]


def _recorder_callback(recorder, layer_key: str):
    def attn2_replace(q, k, v, extra_options):
        height, width = extra_options["activations_shape"][-2:]
        return recorder.cross_attention(
            q, k, v, layer_key, extra_options["n_heads"], recorded_chunks(extra_options), height, width
        )

    return attn2_replace


def _chained(record, other):
    """An attn2 replace that records through the recorder, then returns what another pack's replace on the same
    layer computes (IPAdapter and the like): the recorder reads q and k, the other pack's output flows on."""
    def attn2_replace(q, k, v, extra_options):
        record(q, k, v, extra_options)
        return other(q, k, v, extra_options)

    return attn2_replace


def attach_recorder(model_patcher, recorder, table):
    """A clone of the MODEL whose watched cross-attention layers run through `recorder`.

    The clone's model_options are deep copies, but the callbacks are plain functions that refer to the
    one recorder, so every copy ComfyUI makes while sampling records into the same place. ComfyUI keeps one attn2
    replace per layer: where another pack has one on a watched layer, the two run chained (ours records, theirs
    computes the layer's output).
    """
    patched = model_patcher.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    chained = []
    for layer in table.layers():
        if recorder.watches(layer.key):
            record = _recorder_callback(recorder, layer.key)
            other = existing.get((layer.block, layer.block_id, layer.transformer_index),
                                 existing.get((layer.block, layer.block_id)))
            if other is not None:
                chained.append(layer.key)
                record = _chained(record, other)
            patched.set_model_attn2_replace(record, layer.block, layer.block_id, layer.transformer_index)
    if chained:
        logger.info("Pick-and-Draw: another node's cross-attention patch on %s runs after the recorder there",
                    ", ".join(chained))
    return patched


class StepLocator:
    """Finds the current step in the schedule ComfyUI puts in transformer_options.

    Reading a tensor on the GPU waits for the GPU: the schedule is copied to the host once per run (ComfyUI
    hands the same tensor to every step of a run), and the current sigma is read once per step."""

    def __init__(self):
        self._schedule = None
        self._on_host = None

    def __call__(self, sigma, model_options) -> tuple[int, int, float]:
        """(index of the current step, number of steps, the current sigma as a number)."""
        schedule = model_options.get("transformer_options", {}).get("sample_sigmas")
        if schedule is None:
            raise RuntimeError("ComfyUI did not provide sample_sigmas: guided sampling needs a KSampler or SamplerCustom")
        if schedule is not self._schedule:
            self._schedule, self._on_host = schedule, schedule.detach().float().cpu().tolist()
        current = float(sigma.detach().float().flatten()[0])
        # The first match: a schedule's final 0 is never asked for.
        index = min(range(len(self._on_host)), key=lambda i: abs(self._on_host[i] - current))
        return index, len(self._on_host) - 1, current


_weights_converted_logged = False


def _control_networks(conds) -> list[torch.nn.Module]:
    """The networks of the ControlNets (with the ones they chain to) attached to these conditioning entries: a
    guided step differentiates through them too, since they read the latent."""
    found: list[torch.nn.Module] = []
    for entries in conds:
        for entry in entries or []:
            control = entry.get("control")
            while control is not None:
                network = getattr(control, "control_model", None)
                if isinstance(network, torch.nn.Module) and all(network is not other for other in found):
                    found.append(network)
                control = getattr(control, "previous_controlnet", None)
    return found


def _make_weights_differentiable(*networks: torch.nn.Module) -> int:
    """Replaces inference tensors among the networks' weights by ordinary tensors.

    ComfyUI loads (and LoRA-patches) weights under torch.inference_mode(); such tensors cannot be saved
    for backward. They are cloned one at a time, each original dropped before the next is copied, so the
    peak is one tensor more, not a second model. Ordinary tensors serve later unguided runs as well, and LoRA
    patches still apply and come off as before (tests check both).
    """
    global _weights_converted_logged
    converted = 0
    with torch.inference_mode(False):
        for module in (m for network in networks for m in network.modules()):
            for store in (module._parameters, module._buffers):
                for name, tensor in list(store.items()):
                    if tensor is not None and tensor.is_inference():
                        copy = tensor.detach().clone()
                        store[name] = torch.nn.Parameter(copy, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else copy
                        converted += 1
    if converted and not _weights_converted_logged:
        logger.info("Pick-and-Draw: made %d inference-mode weight tensors differentiable for guided sampling", converted)
        _weights_converted_logged = True
    return converted


def _differentiable_attention(func, *args, **kwargs):
    """ComfyUI's PyTorch attention in place of the function ComfyUI or a pack's override would run (an
    optimized_attention_override: called with that function and its arguments)."""
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


_attention_swap_logged: set[str] = set()


# ComfyUI's attention functions that have a backward pass; any other one it chose (Sage, Flash, Comfy Kitchen and
# whatever comes next) is treated as having none.
_ATTENTION_WITH_BACKWARD = ("attention_pytorch", "attention_sub_quad", "attention_split", "attention_basic",
                            "attention_xformers")


def _attention_without_backward(transformer_options: dict) -> str | None:
    """What would run attention without a backward pass in a forward with these options, or None."""
    override = transformer_options.get("optimized_attention_override")
    if override is not None and override is not _differentiable_attention:
        return "another node's attention override"
    chosen = getattr(getattr(comfy.ldm.modules.attention, "optimized_attention", None), "__name__", "attention_pytorch")
    return None if chosen in _ATTENTION_WITH_BACKWARD else f"ComfyUI's attention ({chosen})"


def with_differentiable_attention(model_options: dict) -> dict:
    """model_options for a guided step's forward pass with gradients: a guided step differentiates through every
    attention layer, and Sage, Flash and other fused kernels (ComfyUI's choice, or another pack's per-model
    attention override) have no backward, so that pass runs PyTorch's attention instead (said once); without
    them, the options as they are."""
    transformer_options = model_options.get("transformer_options", {})
    reason = _attention_without_backward(transformer_options)
    if reason is None:
        return model_options
    if reason not in _attention_swap_logged:
        _attention_swap_logged.add(reason)
        logger.info("Pick-and-Draw: %s has no backward pass; the guided steps' passes with gradients run PyTorch "
                    "attention instead (every other pass keeps it)", reason)
    transformer_options = {**transformer_options, "optimized_attention_override": _differentiable_attention}
    return {**model_options, "transformer_options": transformer_options}


_in_place_patch_logged = False


def _on_copies(patch, tensors: int):
    """A UNet patch called with copies of its first `tensors` arguments (the hidden states). A patch that
    writes into them in place breaks autograd even on copies (it overwrites values its own arithmetic saved): it
    runs again without gradients and its effect passes to the backward as a constant offset (said once)."""
    def patch_on_copies(*args):
        global _in_place_patch_logged
        states = [a.clone() for a in args[:tensors]]
        versions = [state._version for state in states]
        out = patch(*states, *args[tensors:])
        if all(state._version == version for state, version in zip(states, versions)):
            return out
        if not _in_place_patch_logged:
            _in_place_patch_logged = True
            logger.info("Pick-and-Draw: a UNet patch (%s) writes into the hidden states in place; in the guided "
                        "passes the guidance gradient passes through it as through the identity",
                        getattr(patch, "__qualname__", type(patch).__name__))
        with torch.no_grad():
            detached = patch(*(a.detach().clone() for a in args[:tensors]), *args[tensors:])
        if tensors == 1:
            return args[0] + (detached - args[0].detach())
        return tuple(a + (d - a.detach()) for a, d in zip(args[:tensors], detached))

    patch_on_copies.original = patch
    return patch_on_copies


# The UNet patches whose leading arguments are hidden states, and how many: a patch may write into them in place
# (FreeU V2 scales h[:, :C/2] of an output block, NAG overwrites rows of an attention output), which autograd
# refuses when the backward needs their old values.
_PATCH_STATES = {"input_block_patch": 1, "input_block_patch_after_skip": 1, "output_block_patch": 2,
                 "attn1_output_patch": 1, "attn2_output_patch": 1}


def with_patches_on_copies(model_options: dict) -> dict:
    """model_options for a guided step's forward pass with gradients in which every UNet block or attention-output
    patch works on copies of the hidden states it is given (one copy per patched call, in the guided passes only)."""
    transformer_options = model_options.get("transformer_options", {})
    patches = transformer_options.get("patches", {})
    wrapped = {name: [_on_copies(p, _PATCH_STATES[name]) for p in patches[name]]
               for name in _PATCH_STATES if patches.get(name)}
    if not wrapped:
        return model_options
    transformer_options = {**transformer_options, "patches": {**patches, **wrapped}}
    return {**model_options, "transformer_options": transformer_options}


def guided_pass_options(model_options: dict) -> dict:
    """model_options for the forward pass with gradients of a guided step (see the two functions it applies)."""
    return with_patches_on_copies(with_differentiable_attention(model_options))


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


def _store_on(store, device):
    """The store with its entries on the sampling device as ordinary tensors, copied once before sampling:
    a store read from a file sits on the CPU, and one filled under inference mode holds inference tensors;
    left as they are, every guided step would copy (and clone) them again."""
    if store is None:
        return None
    with torch.inference_mode(False):
        moved = type(store)(store.metadata)
        for (sigma_index, layer), tensor in store.entries().items():
            ready = tensor.device == torch.device(device) and not tensor.is_inference()
            moved.set(sigma_index, layer, tensor if ready else tensor.to(device, copy=True))
    return moved


# Memory the forward with gradients keeps for the backward, per latent pixel, batch row and byte of the model's
# dtype: the peak of a guided step over a plain KSampler's, measured on an H100 with ComfyUI's PyTorch attention at
# 512-1024 px (tests/benchmarks/results): 0.117-0.124 MiB for SD1.5-shaped UNets, 0.22-0.23 MiB for SDXL.
_GUIDED_MIB_PER_PIXEL_ROW_BYTE = {"sd1": 0.125, "sd2": 0.125, "sdxl": 0.235}
_split_pass_logged: set[str] = set()


def guided_pass_bytes(family: str, rows: int, height: int, width: int, dtype_bytes: int) -> int:
    """Estimated memory a guided step keeps for its backward when `rows` batch rows run with gradients."""
    return int(_GUIDED_MIB_PER_PIXEL_ROW_BYTE[family] * rows * height * width * dtype_bytes * 2**20)


def _say_split_once(reason: str, message: str) -> None:
    if reason not in _split_pass_logged:
        logger.info("Pick-and-Draw: %s, so guided steps run the conditional rows with gradients and the "
                    "unconditional rows apart (less memory, slower)", message)
        _split_pass_logged.add(reason)


def _batch_guided_pass(requested: bool | None, family: str, model, x, conds) -> bool:
    """Whether a guided step runs the conditional and unconditional rows in one forward pass with gradients.

    One pass launches half the kernels (a UNet step is launch-bound at SD1.5 sizes) but keeps the unconditional
    rows' activations for the backward too (tests/benchmarks/README.md has both measured). So: one pass unless
    ComfyUI runs in a low-VRAM mode or the estimate for it exceeds the free memory ComfyUI reports: its model
    patcher's answer where it has one (with
    dynamic VRAM that counts the weights it can stream out), else the device's."""
    if requested is not None:
        return requested
    import comfy.model_management as mm

    if mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM):
        _say_split_once("low-vram", "ComfyUI runs in a low-VRAM mode")
        return False
    dtype = getattr(model, "manual_cast_dtype", None) or model.get_dtype()
    rows = x.shape[0] * sum(1 for c in conds if c is not None)
    needed = guided_pass_bytes(family, rows, x.shape[-2], x.shape[-1], mm.dtype_size(dtype))
    ask = getattr(getattr(model, "current_patcher", None), "get_free_memory", None)
    free = ask(x.device) if ask is not None else mm.get_free_memory(x.device)
    if needed > free:
        _say_split_once("memory", f"both CFG rows with gradients need about {needed / 2**30:.1f} GiB and ComfyUI "
                                  f"reports {free / 2**30:.1f} GiB free")
        return False
    return True


def _add_control_out_of_place(h, control, name):
    """Adds the next ControlNet residual of this block kind to the hidden states as a new tensor."""
    residuals = control.get(name) if control is not None else None
    if not residuals:
        return h
    residual = residuals.pop()
    if residual is None:
        return h
    try:
        return h + residual
    except RuntimeError:
        logger.warning("Pick-and-Draw: a ControlNet residual of shape %s does not fit hidden states of shape %s; "
                       "it is left out", tuple(residual.shape), tuple(h.shape))
        return h


@contextlib.contextmanager
def _controls_added_out_of_place(conds):
    """While the block runs (a guided pass whose conditioning carries a ControlNet), ComfyUI's UNet adds the
    ControlNet residuals to its hidden states out of place: its own apply_control adds them in place, over tensors
    that the backward needs (the skip connections the next blocks read)."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as unet

    original = getattr(unet, "apply_control", None)
    if original is None or not _control_networks(conds):
        yield
        return
    unet.apply_control = _add_control_out_of_place
    try:
        yield
    finally:
        unet.apply_control = original


def _feed_forward_blocks(model) -> list:
    return [m for m in model.diffusion_model.modules() if isinstance(m, comfy.ldm.modules.attention.FeedForward)]


@contextlib.contextmanager
def _feed_forwards_recomputed(blocks):
    """While the block runs, the UNet's feed-forward blocks keep only their input for the backward and recompute
    the rest in it (activation checkpointing): their GEGLU activations are the largest share of what a guided
    step keeps (measured by tests/benchmarks/guided_step_memory.py), and recomputing them adds one feed-forward
    per block (two projections, a GELU, a product) to the backward. The forward is swapped on the module
    instances and put back afterwards, so the model's
    structure, its weight names (LoRA keys) and other packs' patches are untouched; the backward may run after
    the block, as the recomputation holds the original forward. blocks: _feed_forward_blocks(model), found once
    per run (the search walks the UNet's ~850 modules)."""
    previous = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        original = block.forward
        block.forward = lambda x, original=original: torch.utils.checkpoint.checkpoint(
            original, x, use_reentrant=False, preserve_rng_state=False)  # no dropout at sampling: no RNG to replay
    try:
        yield
    finally:
        for block, before in zip(blocks, previous):
            if before is None:
                del block.forward
            else:
                block.forward = before


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


# Loss scaling before the backward: each term is divided by its own value and multiplied by this, so the backward
# carries numbers of this size whatever the model's energy scale (float16 gradients of a raw UREMD underflow);
# the normalisation after the backward removes the scale.
_LOSS_SCALE = 1024.0
# Per-sample elementwise clip of a term's gradient, in units of its RMS, before normalising: a few latent pixels
# with outsized gradients would otherwise take the whole displacement.
_GRADIENT_CLIP_RMS = 4.0


def unit_direction(gradient: torch.Tensor) -> torch.Tensor:
    """The gradient clipped elementwise at _GRADIENT_CLIP_RMS times its RMS and scaled to unit RMS, per sample
    (a sample whose gradient is zero stays zero)."""
    flat = gradient.float().flatten(1)
    rms = flat.pow(2).mean(1, keepdim=True).sqrt()
    bound = _GRADIENT_CLIP_RMS * rms
    clipped = torch.maximum(torch.minimum(flat, bound), -bound)
    clipped_rms = clipped.pow(2).mean(1, keepdim=True).sqrt()
    return torch.where(clipped_rms > 0, clipped / clipped_rms.clamp_min(1e-30), torch.zeros_like(clipped)).view_as(gradient)


def guidance_direction(terms, x_in: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The guidance direction (unit RMS per sample, float32): the weighted mean of each term's unit direction, scaled
    back to unit RMS, so a weight is that term's share whatever the terms' energy scales. terms: (name, weight, per-sample energy [B]).
    Returns (direction, {name: RMS of that term's raw gradient, summed over samples}) for the step log."""
    active = [(name, weight, energy) for name, weight, energy in terms if weight > 0 and energy.requires_grad]
    direction = torch.zeros(x_in.shape, dtype=torch.float32, device=x_in.device)
    raw_rms = {}
    weight_sum = sum(weight for _, weight, _ in active)
    for index, (name, weight, energy) in enumerate(active):
        # capped so that the scale itself is representable in the energy's dtype (float16: at most 16,376)
        scale = (_LOSS_SCALE / energy.detach().float().abs().clamp_min(1e-30)).clamp(max=torch.finfo(energy.dtype).max / 4)
        scaled = torch.autograd.grad((energy * scale.to(energy.dtype)).sum(), x_in, retain_graph=index < len(active) - 1)[0]
        raw_rms[name] = (scaled.float().flatten(1).pow(2).mean(1).sqrt() / scale).sum()
        direction += (weight / weight_sum) * unit_direction(scaled)
    # the weighted mean of unit directions is shorter where the terms disagree: back to unit RMS, so that the
    # strength alone sets the step's size
    rms = direction.flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (direction.ndim - 1)))
    return torch.where(rms > 0, direction / rms.clamp_min(1e-30), direction), raw_rms


def guidance_displacement(strength: float, x: torch.Tensor, denoised: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """How far the guidance moves the denoised estimate: strength times the RMS of the sampler's own update at this
    sigma (x - denoised, the noise it removes) along the unit-RMS direction, per sample. Strength 1 moves the
    prediction as far as the step's whole noise estimate, on any model, dtype or schedule."""
    update_rms = (x - denoised).float().flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (x.ndim - 1)))
    return (strength * update_rms * direction.to(update_rms.device)).to(denoised.dtype)


def capture_each_step(model_patcher, engine, on_step, first_input: list | None = None):
    """A clone of the MODEL that, on every sampling step, records the conditional rows' maps and
    features and calls on_step(step, steps, sigma, recorder) (template and palette capture passes).
    first_input: a list that receives the latent of the run's first step (its noise), when given."""
    table = layer_table(model_patcher)
    recorder = ops.AttentionRecorder(engine.recorder_layers(), list(engine.config.token_indices))
    recorder.capture = True
    patched = attach_recorder(model_patcher, recorder, table)
    locate = StepLocator()

    def calc_cond_batch(args):
        conds, x, sigma, model, options = args["conds"], args["input"], args["sigma"], args["model"], args["model_options"]
        step, steps, sigma_value = locate(sigma, options)
        if first_input is not None and not first_input:
            first_input.append(x.detach().clone())
        recorder.clear()
        out = comfy.samplers.calc_cond_batch(model, conds, x, sigma, with_subject_entries(conds, options))
        on_step(step, steps, sigma_value, recorder)
        recorder.clear()
        return out

    patched.set_model_sampler_calc_cond_batch_function(calc_cond_batch)
    return patched


# Key under which the subject's token positions travel in a conditioning entry's dict. ComfyUI's
# conditioning nodes (combine, concat, ControlNet apply, area/mask) copy these dicts, so the positions
# reach the sampler through ordinary graphs.
SUBJECT_KEY = "pickdraw_subject"


def _same_token(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # Textual-Inversion embedding vectors
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def _readable_tokens(clip, chunk) -> list[str]:
    """The chunk's tokens as words, without the padding after the end token."""
    ids = [t[0] for t in chunk]
    end = next((i for i in range(1, len(ids)) if not isinstance(ids[i], torch.Tensor) and ids[i] == ids[-1]), len(ids))
    chunk = chunk[:end + 1]
    try:
        return [word for _, word in clip.tokenizer.untokenize(chunk)]
    except Exception:  # a tokenizer without untokenize: show the ids
        return [str(t[0]) if not isinstance(t[0], torch.Tensor) else "<embedding>" for t in chunk]


def subject_tokens(clip, text: str, subject: str) -> dict:
    """Positions of the subject's tokens in the prompt (across 77-token chunks), as the sampler needs them.

    The subject is tokenized on its own and searched as a contiguous run in the prompt's tokens, so multi-token
    words, "sks dog" and Textual-Inversion names (embedding:...) work. A subject absent from the prompt is a
    ValueError listing the prompt's tokens.
    """
    if not subject.strip():
        raise ValueError("subject is empty: name the subject as it is written in the prompt (e.g. 'dog', 'sks dog')")
    prompt = clip.tokenize(text)
    alone = clip.tokenize(subject)
    key = "l" if "l" in prompt else next(iter(prompt))
    chunk = alone[key][0]
    end = next((i for i in range(1, len(chunk)) if not isinstance(chunk[i][0], torch.Tensor) and chunk[i][0] == chunk[-1][0]),
               len(chunk))
    wanted = [t[0] for t in chunk[1:end]]  # without the start token and from the end/padding token on
    flat = [t[0] for c in prompt[key] for t in c]
    indices = []
    for start in range(len(flat) - len(wanted) + 1):
        if wanted and all(_same_token(flat[start + i], w) for i, w in enumerate(wanted)):
            indices.extend(range(start, start + len(wanted)))
    if not indices:
        listed = " ".join(_readable_tokens(clip, prompt[key][0]))
        raise ValueError(f"the subject '{subject}' is not in the prompt; the prompt's tokens are: {listed}")
    return {"subject": subject, "prompt": text, "indices": indices}


def with_subject(conditioning, info: dict):
    """The conditioning with the subject's token positions in every entry's dict."""
    return [[c[0], {**c[1], SUBJECT_KEY: info}] for c in conditioning]


def subject_of(conditioning) -> dict:
    for c in conditioning:
        if SUBJECT_KEY in c[1]:
            return c[1][SUBJECT_KEY]
    raise ValueError(
        "the positive conditioning carries no Pick-and-Draw subject: encode the prompt with "
        "'Subject Prompt (Pick-and-Draw)' (the subject's token positions travel with the conditioning; "
        "Conditioning (Concat) keeps those of its conditioning_to input only, so connect the Subject Prompt there)"
    )


def _check_store(store, family: str, table, what: str) -> list[str]:
    """The store's layers, after checking it was recorded with a model of this family and layer set."""
    recorded = store.metadata.model_family
    if recorded != family:
        raise ValueError(f"the {what} was recorded with a {recorded} model but this MODEL is {family}: "
                         f"record it again with a model of the same family")
    known = {layer.key for layer in table.layers()}
    missing = [key for key in store.metadata.layer_keys if key not in known]
    if missing:
        raise ValueError(f"the {what} has layers this MODEL lacks ({', '.join(missing)}): "
                         f"it was recorded with another architecture")
    return list(store.metadata.layer_keys)


# What the appearance layers record as features (see AttentionRecorder.feature_source): image features, the
# query projection of the hidden states each cross-attention layer reads.
PALETTE_FEATURE_SOURCE = "attn2_query"


def _palette_mask_settings(palette) -> dict:
    """The palette's subject-mask settings, which the guided run reuses so that the generated subject is masked
    as the reference was; palettes that recorded the attention output are refused."""
    source = palette.metadata.feature_source
    if source != PALETTE_FEATURE_SOURCE:
        raise ValueError(f"this palette recorded '{source}' features, which carry the prompt rather than the image: "
                         "pick it again with Pick Palette from this version of the pack")
    extra = palette.metadata.extra
    layers = [key for key in extra.get("mask_layers", "").split(",") if key]
    return {"mask_layers": layers or list(palette.metadata.layer_keys), "tau": float(palette.metadata.tau),
            "min_mask_pixels": int(extra.get("min_mask_pixels", "4"))}


def check_finite_store(store, what: str) -> None:
    """ValueError naming the first entry of a palette or template that holds NaN or infinity."""
    for (sigma_index, layer), tensor in store.entries().items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"the {what} holds values that are not finite (sigma {sigma_index}, layer {layer}): "
                             f"it is corrupt; pick or draw it again")


def check_guidance_settings(strength: float, weights: dict) -> None:
    """ValueError for a strength, weight or window that is not a finite number in its range."""
    values = {"strength": strength, **weights}
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} is {value}: give a finite number")
    if strength < 0:
        raise ValueError(f"strength is {strength}: give 0 (no guidance) or more")
    for name, value in weights.items():
        if value < 0 or (name.endswith(("_start", "_end")) and value > 1):
            raise ValueError(f"{name} is {value}: weights are >= 0 and windows are fractions of the steps in 0..1")


def _guidance_engine(model_patcher, positive, palette, layout_template, weights: dict):
    """The engine for a guided run: layers from the connected stores (checked against this MODEL), tokens from
    the positive conditioning, weights as given; a term without its store is off."""
    if palette is None and layout_template is None:
        raise ValueError("connect a palette, a layout template, or both: without them there is nothing to guide")
    for store, what in ((palette, "palette"), (layout_template, "layout template")):
        if store is not None:
            check_finite_store(store, what)
    family = model_family(model_patcher)
    table = layer_table(model_patcher)
    config = ops.GuidanceConfig()
    config.token_indices = list(subject_of(positive)["indices"])
    for name, value in weights.items():
        setattr(config, name, value)
    config.appearance_layers = _check_store(palette, family, table, "palette") if palette is not None else []
    if palette is not None:
        for name, value in _palette_mask_settings(palette).items():
            setattr(config, name, value)
    config.layout_layers = _check_store(layout_template, family, table, "layout template") if layout_template is not None else []
    if palette is None:
        config.appearance_weight = 0.0
    if layout_template is None:
        config.layout_weight = 0.0
    return ops.GuidanceEngine(config)


def guided_sample(model_patcher, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise,
                  palette, layout_template, weights: dict, strength: float, batched: bool | None = None):
    """ComfyUI's KSampler (same noise, schedule, preview and progress) with Pick-and-Draw guidance.

    weights: appearance_weight, layout_weight, appearance_start/end, layout_start/end, tau (the engine's
    config fields). A term whose store is not connected is off. batched: see guide_model. Returns (latent
    dict, run log).
    """
    import nodes as comfy_nodes  # ComfyUI's nodes.py: common_ksampler is its KSampler

    check_guidance_settings(strength, weights)
    if not bool(torch.isfinite(latent["samples"]).all()):
        raise ValueError("the latent image holds values that are not finite (NaN or infinity): check the node that made it")
    if layout_template is not None:
        check_template_matches(layout_template, _run_facts(seed, steps, cfg, sampler_name, scheduler, denoise, latent["samples"]))
    if palette is not None:
        warn_palette_schedule(palette, steps, scheduler)
    engine = _guidance_engine(model_patcher, positive, palette, layout_template, weights)
    guided, run = guide_model(model_patcher, engine, palette, layout_template, strength, batched)
    (out,) = comfy_nodes.common_ksampler(guided, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                         denoise=denoise)
    log = run.log
    report_unguided_steps(log)
    return out, log


def warn_palette_schedule(palette, steps: int, scheduler: str) -> None:
    """A palette picked along another schedule (steps, scheduler) still works, each step taking the entry at the
    nearest recorded sigma, but its features then come from other noise levels than the run's: said, with both."""
    picked = palette.metadata.extra
    if picked.get("steps") not in (None, str(int(steps))) or picked.get("scheduler") not in (None, scheduler):
        logger.warning("Pick-and-Draw: the palette was picked along %s steps of the '%s' schedule and this run samples "
                       "%d steps of '%s': each step uses the palette entry at the nearest sigma (pick the palette with "
                       "the run's steps and scheduler for entries at its exact sigmas)", picked.get("steps"),
                       picked.get("scheduler"), int(steps), scheduler)


def report_unguided_steps(log: list[dict]) -> None:
    """Says which guided steps were not applied: where the subject's prompt did not run (a timestep range on its
    conditioning), and where the gradient was not finite (float16 overflow, a NaN in the model): those samples
    took the plain step there."""
    absent = [entry["step"] for entry in log if entry.get("subject_absent")]
    if absent:
        logger.info("Pick-and-Draw: the subject's prompt did not run at step(s) %s (a timestep range on its "
                    "conditioning); the guidance was off there", ", ".join(map(str, absent)))
    skipped = [entry["step"] for entry in log if entry.get("not_finite")]
    if skipped:
        logger.warning("Pick-and-Draw: the guidance gradient was not finite at step(s) %s; those steps were sampled "
                       "without guidance (a float16 overflow or a NaN in the model: try float32 or a lower strength)",
                       ", ".join(map(str, skipped)))


def noise_fingerprint(x: torch.Tensor) -> str:
    """A short text that identifies a run's first latent (its seed's noise at the first sigma, plus the latent it
    starts from): the first sample's mean, RMS and eight of its values, to four significant digits. ComfyUI draws a
    batch's noise from one generator, so a template of one sample fits a guided batch of the same seed."""
    flat = x[:1].detach().float().flatten().cpu()
    picks = flat[torch.linspace(0, flat.numel() - 1, 8).long()]
    return ",".join(f"{float(v):.4g}" for v in (flat.mean(), flat.pow(2).mean().sqrt(), *picks))


def fingerprints_match(a: str, b: str) -> bool:
    """Whether two noise fingerprints name the same first latent, up to their rounding."""
    first, second = [float(v) for v in a.split(",")], [float(v) for v in b.split(",")]
    return len(first) == len(second) and all(math.isclose(u, v, rel_tol=2e-3, abs_tol=1e-3) for u, v in zip(first, second))


def _run_facts(seed, steps, cfg, sampler_name, scheduler, denoise, latent_samples) -> dict:
    """What a layout template must share with the guided run that uses it, as metadata strings."""
    return {"seed": str(int(seed)), "steps": str(int(steps)), "sampler": sampler_name, "scheduler": scheduler,
            "denoise": f"{float(denoise):.4f}", "latent_size": f"{latent_samples.shape[-2]}x{latent_samples.shape[-1]}",
            "cfg": f"{float(cfg):.4f}"}


def check_template_matches(layout_template, facts: dict) -> None:
    """ValueError naming every fact in which the template's run differs from this one."""
    recorded = layout_template.metadata.extra
    differ = [f"{key} {recorded.get(key)} vs {value}" for key, value in facts.items()
              if key != "cfg" and recorded.get(key) != value]
    if differ:
        raise ValueError("the layout template was drawn with another " + ", ".join(differ) +
                         " (template vs this run): draw it with the same seed, steps, sampler, scheduler, denoise "
                         "and latent size as the guided run")


def _recording_setup(model_patcher, positive, **config_fields):
    """(family, subject, config, engine) for a capture pass of this MODEL and prompt (the callers pass the
    layers, read from layer_table, which refuses unsupported models before anything runs)."""
    family = model_family(model_patcher)
    subject = subject_of(positive)
    config = ops.GuidanceConfig()
    config.token_indices = list(subject["indices"])
    for name, value in config_fields.items():
        setattr(config, name, value)
    return family, subject, config, ops.GuidanceEngine(config)


def _report_absent_subject(what: str, absent: list[int], total: int) -> None:
    """After a capture pass: the steps at which no conditioning entry carrying the subject ran (a timestep range on
    it) hold no entry in the store, which is said; a pass in which it never ran is refused."""
    if not absent:
        return
    if len(absent) == total:
        raise ValueError(f"the subject's prompt did not run at any step of the {what}'s pass (a timestep range on its "
                         "conditioning?): connect a conditioning that is active for at least one step")
    logger.info("Pick-and-Draw: the subject's prompt did not run at step(s) %s of the %s's pass (a timestep range on "
                "its conditioning); the %s holds no entry there", ", ".join(map(str, absent)), what, what)


def _store_metadata(family, layers, subject, sigmas, feature_source, height, width, extra, tau=0.5):
    metadata = ops.GuidanceMetadata()
    metadata.model_family = family
    metadata.layer_keys = list(layers)
    metadata.tokens = ops.SubjectTokens(subject["subject"], subject["prompt"], list(subject["indices"]))
    metadata.image_height, metadata.image_width = int(height), int(width)
    metadata.sigmas = [float(s) for s in sigmas]
    metadata.feature_source = feature_source
    metadata.tau = tau
    metadata.extra = extra
    return metadata


def draw_layout_template(model_patcher, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                         denoise=1.0, kernel_size=3, smoothing_sigma=0.5):
    """Samples with the (vanilla) MODEL as KSampler does and records the subject's smoothed maps of every
    cross-attention layer at every step. Returns (LayoutTemplate, latent dict, subject map [B, H, W] of the
    first step, averaged over layers, for previews)."""
    import nodes as comfy_nodes

    if not float(denoise) > 0:
        raise ValueError(f"denoise is {denoise}: a layout template records the steps the sampler runs, and denoise 0 "
                         "runs none (use denoise > 0, as in the guided run the template is for)")
    family, subject, config, engine = _recording_setup(
        model_patcher, positive, layout_layers=layer_table(model_patcher).default_layout_layers(),
        smoothing_kernel=kernel_size, smoothing_sigma=smoothing_sigma)
    recorded = []  # (step, sigma, {layer: smoothed map})

    absent = []

    def on_step(step, steps_total, sigma, recorder):
        if not recorder.maps():
            absent.append(step)
            return
        maps = {key: ops.gaussian_smooth(recorder.maps()[key].mean(1).detach().clone(), kernel_size, smoothing_sigma)
                for key in config.layout_layers}
        recorded.append((step, sigma, maps))

    first_input = []
    capturing = capture_each_step(model_patcher, engine, on_step, first_input)
    (out,) = comfy_nodes.common_ksampler(capturing, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                         latent, denoise=denoise)
    _report_absent_subject("layout template", absent, len(absent) + len(recorded))
    template = ops.LayoutTemplate(_store_metadata(
        family, config.layout_layers, subject, [sigma for _, sigma, _ in recorded], "attn2_probabilities",
        latent["samples"].shape[-2] * 8, latent["samples"].shape[-1] * 8,
        {**_run_facts(seed, steps, cfg, sampler_name, scheduler, denoise, latent["samples"]),
         "noise": noise_fingerprint(first_input[0])}))
    for index, (_, _, maps) in enumerate(recorded):
        for key, value in maps.items():
            template.set(index, key, value)
    first = recorded[0][2]
    size = max((m.shape[-2], m.shape[-1]) for m in first.values())
    preview = ops.average_token_maps(list(first.values()), size)
    return template, out, preview


@torch.no_grad()
def _invert(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Deterministic inversion along ascending sigmas: Euler in sigma space with the model's own prediction,
    which with cfg 1 is DDIM inversion. The model is evaluated on the latent *at* each level, so what a capture
    pass records at sigma_i comes from the inverted latent at sigma_i; that evaluation's noise estimate then
    carries the latent to the next level. The first level needs one extra evaluation (on the clean latent, at
    the first sigma) to get there: a capture pass ignores its first call."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    noise = (x - model(x, sigmas[0] * s_in, **extra_args)) / sigmas[0]
    previous = 0.0
    for i, sigma in enumerate(sigmas):
        x = x + (sigma - previous) * noise
        denoised = model(x, sigma * s_in, **extra_args)
        noise = (x - denoised) / sigma
        previous = sigma
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return x


def pick_palette(model_patcher, vae, image, positive, steps, scheduler, mask=None, tau=0.5, min_pixels=4):
    """Inverts the reference image along the model's own sigma schedule (one pass, cfg 1) and keeps, at every
    sigma, the appearance layers' features inside the subject (the saliency mask of the subject's maps, or
    the given MASK). Returns (Palette, token map [H, W] at the lowest sigma, mask [H, W] at the finest
    appearance layer), the last two for previews."""
    import comfy.sample

    if image.shape[1] % 8 or image.shape[2] % 8:
        raise ValueError(f"the reference image is {image.shape[2]}x{image.shape[1]}: both sides must be multiples of 8 "
                         "(resize or crop it)")
    if image.shape[0] != 1:
        raise ValueError(f"give one reference image, got a batch of {image.shape[0]}")
    appearance_layers = layer_table(model_patcher).default_appearance_layers()
    family, subject, config, engine = _recording_setup(
        model_patcher, positive, appearance_layers=appearance_layers, mask_layers=appearance_layers,
        tau=tau, min_mask_pixels=min_pixels)
    latent = vae.encode(image[..., :3])
    schedule = comfy.samplers.calculate_sigmas(model_patcher.get_model_object("model_sampling"), scheduler, steps)
    ascending = schedule[schedule > 0].flip(0)
    recorded = []  # (sigma, {layer: features}, token map, mask)
    calls, absent = [], []

    def on_step(step, steps_total, sigma, recorder):
        calls.append(sigma)
        if len(calls) == 1:  # _invert's first call, on the clean latent, only finds the way to the first level
            return
        if not recorder.maps():
            absent.append(len(calls) - 2)
            return
        entries, masks = {}, {}
        for layer in config.appearance_layers:
            features = recorder.features()[layer][0].detach().clone()  # the one conditional row
            h, w = recorder.maps()[layer].shape[-2:]
            if mask is None:
                keep = engine.subject_mask(recorder, h, w)[0] > 0.5
            else:
                resized = torch.nn.functional.interpolate(mask.reshape(1, 1, *mask.shape[-2:]).float(), size=(h, w), mode="area")
                keep = resized.flatten() > 0.5
                if not keep.any():
                    raise ValueError("the mask covers no part of the subject at the feature resolution: widen it")
            entries[layer] = features[keep.to(features.device)]
            masks[layer] = keep.view(h, w)
        maps = [m.mean(1).detach().clone() for m in recorder.maps().values()]
        size = max((m.shape[-2], m.shape[-1]) for m in maps)
        recorded.append((sigma, entries, ops.average_token_maps(maps, size)[0], masks))

    import latent_preview  # ComfyUI's: progress bar, previews and (through its hook) Cancel

    capturing = capture_each_step(model_patcher, engine, on_step)
    sampler = comfy.samplers.KSAMPLER(_invert)
    preview_and_progress = latent_preview.prepare_callback(capturing, len(ascending))

    def callback(step, x0, x, total_steps):
        # KSAMPLER counts len(sigmas) - 1 steps, as a schedule ends at 0; the inversion's ascending sigmas do not
        preview_and_progress(step, x0, x, len(ascending))
    comfy.sample.sample_custom(capturing, torch.zeros_like(latent), 1.0, sampler, ascending, positive, positive, latent,
                               callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    _report_absent_subject("palette", absent, len(absent) + len(recorded))
    palette = ops.Palette(_store_metadata(
        family, config.appearance_layers, subject, [sigma for sigma, _, _, _ in recorded], PALETTE_FEATURE_SOURCE,
        image.shape[1], image.shape[2],
        {"steps": str(int(steps)), "scheduler": scheduler, "mask": "user" if mask is not None else "saliency",
         "mask_layers": ",".join(config.mask_layers), "min_mask_pixels": str(int(min_pixels))}, tau))
    for index, (_, entries, _, _) in enumerate(recorded):
        for layer, features in entries.items():
            palette.set(index, layer, features)
    finest = max(config.appearance_layers, key=lambda key: recorded[0][3][key].numel())
    return palette, recorded[0][2], recorded[0][3][finest]


def guided_cfg_guider(model_patcher, positive, negative, cfg, palette, layout_template, weights: dict, strength: float):
    """A CFGGuider for SamplerCustomAdvanced that samples with the guidance. The noise and sigmas come from the
    other nodes of that graph, so the template's seed and schedule cannot be checked before sampling: the first
    step compares its latent with the template's noise fingerprint, and the sigma lookup refuses a schedule outside
    the recorded range."""
    check_guidance_settings(strength, weights)
    engine = _guidance_engine(model_patcher, positive, palette, layout_template, weights)
    expected = layout_template.metadata.extra.get("noise") if layout_template is not None else None
    guided, run = guide_model(model_patcher, engine, palette, layout_template, strength, expected_noise=expected)
    guider = comfy.samplers.CFGGuider(guided)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider, run
