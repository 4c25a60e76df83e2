"""What a guided step's forward pass with gradients needs from ComfyUI's model: differentiable weights and
attention, UNet patches that do not write over saved tensors, the stores on the sampling device, the choice between
one batched pass and a split one, and the memory-saving recomputation of the split pass."""

from __future__ import annotations

import contextlib
import logging

import comfy.ldm.modules.attention
import torch
import torch.utils.checkpoint

logger = logging.getLogger("pickdraw")


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
# dtype: the peak of a guided step over a plain KSampler's, rounded up from the measurements recorded in
# tests/benchmarks/README.md (ComfyUI's PyTorch attention, 512-1024 px).
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
