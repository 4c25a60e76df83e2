"""Every core ComfyUI node that patches a MODEL or builds CONDITIONING, composed with the pack's three sampling
stages (Guided KSampler, Draw Layout Template, Pick Palette) on tiny SD1.x models: the matrix the composition test
checks and prints.

A node is built with stand-ins for its required inputs (the tiny model, the subject's conditioning, a tiny text
encoder, small images, masks and latents, widget defaults); a node needing another kind of input (a ControlNet file,
a CLIP-vision model, an upscaler, ...) cannot be built without downloads and is listed as such. Each stage then
either works, refuses with a ValueError that names the fix, or fails; a stage whose plain counterpart (KSampler)
fails the same way is the node's own limit on this model, not ours.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import torch

from comfy_env import PoolingVae, guidance_stores, require_comfyui, sharpen_cross_attention, subject_conditioning, tiny_clip, tiny_sd1_patcher

STEPS, LATENT = 2, 8
# Core nodes left out of the matrix, with why. TorchCompileModel compiles the UNet with torch.compile: compiling
# it again for every shape and mode of the matrix's runs takes minutes on a CPU.
EXCLUDED = {"TorchCompileModel": "compiles the model with torch.compile (minutes per run on a CPU)"}


def core_nodes(registry: dict, output: str, input_kind: str) -> dict:
    """{node id: class} of ComfyUI's own nodes (nodes.py and comfy_extras) with an `output` output and an input of
    `input_kind`."""
    found = {}
    for name, cls in sorted(registry.items()):
        loaded_from = getattr(cls, "RELATIVE_PYTHON_MODULE", None) or getattr(cls, "__module__", "")
        if not (loaded_from == "nodes" or loaded_from.startswith("comfy_extras.")):
            continue
        try:
            returns = list(cls.RETURN_TYPES)
            declared = cls.INPUT_TYPES()
        except Exception:  # a node whose schema cannot be read outside the server
            continue
        required = declared.get("required", {})
        if output in returns and any(spec[0] == input_kind for spec in required.values() if isinstance(spec[0], str)):
            found[name] = cls
    return found


def _value(kind, options: dict, pool: dict, first: dict):
    if isinstance(kind, (list, tuple)):
        if not kind:
            raise LookupError("file from its list (the list is empty here)")
        return kind[0]
    if kind in ("INT", "FLOAT"):
        return options.get("default", options.get("min", 0))
    if kind == "BOOLEAN":
        return options.get("default", False)
    if kind == "STRING":
        return options.get("default", "")
    if kind == "COMBO":
        values = options.get("options") or []
        if "default" not in options and not values:
            raise LookupError("file from its list (the list is empty here)")
        return options.get("default", values[0] if values else None)
    if kind in pool:
        if kind in first:  # a second input of the same kind (Combine's conditioning_2, ...) gets the other one
            return pool.get(f"{kind}#2", pool[kind])
        first[kind] = True
        return pool[kind]
    raise LookupError(kind)


def build(cls, pool: dict):
    """(outputs of the node built from the pool's stand-ins) or raises LookupError naming an input it lacks."""
    declared = cls.INPUT_TYPES()
    kwargs, first = {}, {}
    for name, spec in declared.get("required", {}).items():
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        kwargs[name] = _value(spec[0], options, pool, first)
    execute = getattr(cls, "execute", None)
    if getattr(cls, "FUNCTION", None) and not (inspect.ismethod(execute) and getattr(cls, "define_schema", None)):
        result = getattr(cls(), cls.FUNCTION)(**kwargs)
    else:
        result = execute(**kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    if isinstance(result, dict):
        result = result["result"]
    return tuple(getattr(result, "result", result) or ())


def _outcome(run):
    try:
        run()
        return "works"
    except ValueError as error:
        return "refused: " + str(error).split("\n")[0][:160]
    except Exception as error:  # noqa: BLE001 -- the matrix records what happened
        return f"fails: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"


def matrix() -> dict:
    """{node id: {"stage": outcome}} for every core MODEL or CONDITIONING node."""
    host = require_comfyui()
    import nodes as comfy_nodes

    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    registry = comfy_nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        model = sharpen_cross_attention(tiny_sd1_patcher())
    clip = tiny_clip()
    positive, negative = subject_conditioning("sd1", 0, 64)
    other = clip.encode_from_tokens_scheduled(clip.tokenize("a red car at night"))
    palette, template = guidance_stores(model, positive, negative, 3, STEPS, 5.0, LATENT)
    latent = {"samples": torch.zeros(1, 4, LATENT, LATENT)}
    pool = {"MODEL": model, "CONDITIONING": positive, "CONDITIONING#2": other, "CLIP": clip, "VAE": PoolingVae(),
            "IMAGE": torch.rand(1, LATENT * 8, LATENT * 8, 3, generator=torch.Generator().manual_seed(1)),
            "MASK": torch.ones(1, LATENT * 8, LATENT * 8), "LATENT": latent}
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_start": 0.0, "appearance_end": 1.0, "layout_end": 1.0}
    reference = torch.rand(1, LATENT * 8, LATENT * 8, 3, generator=torch.Generator().manual_seed(2))

    def stages(patched, cond):
        def plain():
            (out,) = comfy_nodes.common_ksampler(patched, 3, STEPS, 5.0, "euler", "normal", cond, negative, latent)
            assert torch.isfinite(out["samples"]).all(), "the plain latent is not finite"

        def guided():
            out, _ = host.guided_sample(patched, host.SamplingSettings(3, STEPS, 5.0, "euler", "normal", 1.0), cond,
                                        negative, latent, palette, template, host.GuidanceSettings(0.3, **weights))
            assert torch.isfinite(out["samples"]).all(), "the guided latent is not finite"

        def draw():
            host.draw_layout_template(patched, host.SamplingSettings(3, STEPS, 5.0, "euler", "normal"), cond,
                                      negative, latent)

        def pick():
            host.pick_palette(patched, PoolingVae(), reference, cond, STEPS, "normal")

        with torch.inference_mode():  # as ComfyUI executes a prompt
            baseline = _outcome(plain)
            row = {"KSampler": baseline}
            for name, run in (("Guided KSampler", guided), ("Draw Layout Template", draw), ("Pick Palette", pick)):
                row[name] = _outcome(run)
        return row

    rows = {}
    for kind in ("MODEL", "CONDITIONING"):
        for name, cls in core_nodes(registry, kind, kind).items():
            if name in EXCLUDED:
                rows[name] = {"built": "excluded: " + EXCLUDED[name]}
                continue
            started = time.time()
            try:
                with torch.inference_mode():  # a model patch's own conditioning inputs (PerpNeg's empty one) get others
                    outputs = build(cls, {**pool, "CONDITIONING": negative} if kind == "MODEL" else pool)
            except LookupError as missing:
                rows[name] = {"built": f"needs a {missing.args[0]} input: none without downloads"}
                continue
            except Exception as error:  # noqa: BLE001
                rows[name] = {"built": f"the node itself fails on a tiny SD1 {kind.lower()}: {type(error).__name__}: "
                                       f"{str(error).splitlines()[0][:120] if str(error) else ''}"}
                continue
            result = outputs[list(cls.RETURN_TYPES).index(kind)]
            row = stages(result, positive) if kind == "MODEL" else stages(model, result)
            rows[name] = {"built": "yes", **row}
            print(f"{name}: {time.time() - started:.1f} s", flush=True)
    return rows
