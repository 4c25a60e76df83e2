"""Recording set-up shared by every pass: the recorder hooked into the watched cross-attention layers, the step
locator, the capture pass of the template and the palette, and the metadata their stores carry."""

from __future__ import annotations

import logging

import comfy.samplers
import torch

from .. import ops
from .family import layer_table, model_family
from .subject import recorded_chunks, subject_of, with_subject_entries

logger = logging.getLogger("pickdraw")


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


def engine_config(positive, **config_fields) -> tuple[dict, "ops.GuidanceConfig"]:
    """(subject, the engine's configuration) for the subject of this positive conditioning and the given fields."""
    subject = subject_of(positive)
    config = ops.GuidanceConfig()
    config.token_indices = list(subject["indices"])
    for name, value in config_fields.items():
        setattr(config, name, value)
    return subject, config


def _recording_setup(model_patcher, positive, **config_fields):
    """(family, subject, config, engine) for a capture pass of this MODEL and prompt (the callers pass the
    layers, read from layer_table, which refuses unsupported models before anything runs)."""
    family = model_family(model_patcher)
    subject, config = engine_config(positive, **config_fields)
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


def _store_from_pass(store_type, provisional, recorded: list[int], metadata):
    """The store a capture pass made: the entries the engine recorded into `provisional` at the pass's step indices
    `recorded` (the steps where the subject's prompt ran), as entries 0, 1, ... of a store with `metadata` (whose
    sigmas are those steps')."""
    store = store_type(metadata)
    entries = provisional.entries()
    for index, step in enumerate(recorded):
        for layer in metadata.layer_keys:
            store.set(index, layer, entries[(step, layer)])
    return store


def token_map_preview(maps: list) -> torch.Tensor:
    """Token maps of several layers ([B, h, w], or [B, tokens, h, w] averaged over the tokens) averaged at the finest
    layer's size: [B, H, W], for the previews."""
    maps = [m.mean(1) if m.dim() == 4 else m for m in maps]
    size = max((m.shape[-2], m.shape[-1]) for m in maps)
    return ops.average_token_maps([m.detach() for m in maps], size)
