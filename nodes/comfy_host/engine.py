"""The guidance engine of a guided run: the connected stores checked against the MODEL, the subject's tokens,
and the weights and windows, as the native engine's configuration."""

from __future__ import annotations

import math

import torch

from .. import ops
from .family import layer_table, model_family
from .palette import PALETTE_FEATURE_SOURCE
from .recording import engine_config


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
    _, config = engine_config(positive, **weights)
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
