#!/usr/bin/env python3
"""How often the judge (judge.py) reads the world's own held-out pictures right, per field, as JSON.

    python tests/evaluation/toy_world/judge_accuracy.py --count 400 --seed 12345
    python tests/evaluation/toy_world/judge_accuracy.py --count 400 --seed 12345 --blur --artefacts
    COMFYUI_PATH=/path/to/ComfyUI python tests/evaluation/toy_world/judge_accuracy.py --count 400 --seed 12345 --vae
    COMFYUI_PATH=/path/to/ComfyUI python tests/evaluation/toy_world/judge_accuracy.py --count 200 --seed 12345 \
        --vae --unet-sigmas 0.05,0.2,0.8

Picture i is world.sample(10**6 + seed + i): small seeds, never drawn by world.dataset (whose per-picture seeds
are 62-bit draws from rng seed 0). With --blur each picture is also read after `degrade`, a stand-in for a
small VAE's round trip and a diffusion model's colour noise (Gaussian blur sigma 1.5 px, chroma halved in
resolution, a colour shift of gain 1 +- 0.08 and offset +- 10 per channel, Gaussian noise of std 8), and both
accuracies are printed. With --artefacts each degraded picture is also read after `add_artefacts`, a stand-in
for what the toy UNet leaves on its pictures' backgrounds: a faint copy of the world's check pattern (an
overfitted LoRA draws it; the toy world's README gives its measured strength) and a frame shaded darker.
With --vae each picture is also read after the shipped toy autoencoder's round trip
(encode, decode): the best a picture the toy model draws can be read, whatever the UNet does. With --unet-sigmas
each picture is also read after the toy UNet's one-step denoising at each noise level (unet_denoising): where
along the noise levels the UNet loses what the judge reads.

Fields: cls, scene, body, pattern (all pictures); pattern_colour (pictures whose subject is not solid: a
solid subject shows no pattern colour); box (IoU of the read box with the true box >= 0.5); position (pictures
placed with a position word: the word is among the read position words); size (pictures placed with a size
word: the read size word is that word). world.place draws unsized and unplaced pictures over the whole range,
so the layout words are scored only where the caption would say them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script: the toy_world package and the tests' shared harness become importable
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2] / "python")]
    from toy_world import judge, world
else:
    from . import judge, world

BASE_SEED = 10**6
FIELDS = ("cls", "scene", "body", "pattern", "pattern_colour", "box", "position", "size")


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="reflect")
        out = sum(w * np.take(padded, np.arange(k, k + image.shape[axis]), axis=axis) for k, w in enumerate(taps))
    return out


def degrade(image: np.ndarray, rng: np.random.Generator, sigma: float = 1.5, noise: float = 8.0) -> np.ndarray:
    """The picture as a small VAE + diffusion model might give it back (see the module docstring)."""
    x = _blur(image.astype(np.float64), sigma)
    # JPEG-like: chroma at half resolution
    y = x @ np.array([0.299, 0.587, 0.114])
    cb, cr = x[..., 2] - y, x[..., 0] - y
    def half(c):
        h, w = c.shape
        return np.repeat(np.repeat(c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)), 2, axis=0), 2, axis=1)
    cb, cr = half(cb), half(cr)
    r, b = cr + y, cb + y
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    x = np.stack([r, g, b], axis=-1)
    x = x * rng.uniform(0.92, 1.08, 3) + rng.uniform(-10, 10, 3)
    x = x + rng.normal(0, noise, x.shape)
    return np.clip(x, 0, 255).round().astype(np.uint8)


HAZE = 35.0  # grey shift of the background's check cells, +- per cell (RGB distance about 60 at a cell's centre)
SHADE = 40.0  # grey darkening of the frame's outermost pixels, fading over FRAME px
FRAME = 8


def add_artefacts(image: np.ndarray, subject: np.ndarray, rng: np.random.Generator, haze: float = HAZE) -> np.ndarray:
    """The background overlaid with a soft check pattern of the world's period at a random phase, lighter and
    darker by `haze` in turn, and the frame shaded; the subject (mask `subject`) left as it is."""
    half = world.PATTERN_PERIOD // 2
    dy, dx = rng.integers(0, world.PATTERN_PERIOD, 2)
    yy, xx = np.mgrid[:world.SIZE, :world.SIZE]
    cells = (((yy + dy) // half) + ((xx + dx) // half)) % 2
    shift = _blur(np.where(cells == 1, haze, -haze)[..., None], 2.0)[..., 0]
    edge = np.minimum(np.minimum(yy, world.SIZE - 1 - yy), np.minimum(xx, world.SIZE - 1 - xx))
    shift = np.where(subject, 0.0, shift) - SHADE * np.clip(1 - edge / FRAME, 0, 1)
    return np.clip(image.astype(np.float64) + shift[..., None], 0, 255).round().astype(np.uint8)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def score(reading: judge.Reading, truth: world.Scene) -> dict[str, bool]:
    """Per field, whether the reading is right (fields that do not apply to this picture are left out)."""
    subject = truth.subject
    result = {
        "cls": reading.cls == subject.cls,
        "scene": reading.scene == truth.scene,
        "body": reading.body == subject.body,
        "pattern": reading.pattern == subject.pattern,
        "box": reading.box is not None and iou(reading.box, truth.box) >= 0.5,
    }
    if subject.pattern != "solid":
        result["pattern_colour"] = reading.pattern_colour == subject.pattern_colour
    if truth.position:
        result["position"] = truth.position in reading.position_words()
    if truth.size_word:
        result["size"] = reading.size_word() == truth.size_word
    return result


def _toy_world_models():
    """The host adapter's toy-world module (it imports ComfyUI, which comfy_env has put on the path)."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "nodes" / "comfy_host" / "toy_world_models.py"
    spec = importlib.util.spec_from_file_location("toy_world_models", path)
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    return models


def vae_round_trip(weights: Path | None = None):
    """The toy autoencoder's encode-decode as a picture -> picture function (ComfyUI from COMFYUI_PATH): the shipped
    one, or the one in the folder `weights` (a training run's --out)."""
    import torch

    import comfy_env

    comfy_env.require_comfyui()
    import comfy.utils

    models = _toy_world_models()
    folder = Path(weights) if weights else models.WEIGHTS
    vae = models.build_vae(comfy.utils.load_torch_file(str(folder / "toy_world_vae.safetensors"), safe_load=True))

    def round_trip(image: np.ndarray, rng: np.random.Generator, truth: world.Scene) -> np.ndarray:
        pixels = torch.from_numpy(image).float().div(255).unsqueeze(0)
        return (vae.decode(vae.encode(pixels))[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    return round_trip


def unet_denoising(sigma: float, weights: Path | None = None):
    """The toy UNet's one-step denoising as a picture -> picture function: the picture encoded, noised to `sigma`
    (ComfyUI's sigma space, the noise drawn from the picture's rng), denoised in one step with the class-noun prompt
    of its truth ("a star on the beach", as the drawing accuracy asks), unguided, and decoded. A sampler's last steps
    are such steps at low sigma, so a class lost there is lost from the sampled pictures too. At sigma 0 the UNet
    is not run (the autoencoder's round trip)."""
    import torch

    import comfy_env

    comfy_env.require_comfyui()
    models = _toy_world_models()
    patcher, clip, vae = models.load(Path(weights) if weights else models.WEIGHTS)
    model = patcher.model

    def denoised(image: np.ndarray, rng: np.random.Generator, truth: world.Scene) -> np.ndarray:
        pixels = torch.from_numpy(image).float().div(255).unsqueeze(0)
        clean = model.process_latent_in(vae.encode(pixels))
        if sigma > 0:
            prompt = f"a {truth.subject.cls} {truth.scene}"
            context = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0]
            noise = torch.from_numpy(rng.standard_normal(clean.shape)).float()
            with torch.no_grad():
                clean = model.apply_model(clean + sigma * noise, torch.tensor([sigma]), c_crossattn=context)
        decoded = vae.decode(model.process_latent_out(clean))[0]
        return (decoded.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    return denoised


def accuracy(count: int, seed: int, blur: bool = False, failures: list | None = None, transform=None,
             artefacts: bool = False, haze: float = HAZE) -> dict:
    """{'accuracy': {field: share right}, 'n': {field: pictures scored}} over pictures seed..seed+count-1, read
    after `degrade` when blur, then `add_artefacts` when artefacts, or after transform(image, rng, truth) when given."""
    right = dict.fromkeys(FIELDS, 0)
    n = dict.fromkeys(FIELDS, 0)
    for i in range(count):
        picture_seed = BASE_SEED + seed + i
        image, mask, truth = world.sample(picture_seed)
        if blur:
            image = degrade(image, np.random.default_rng([picture_seed, 1]))
        if artefacts:
            image = add_artefacts(image, mask, np.random.default_rng([picture_seed, 2]), haze)
        if transform is not None:
            image = transform(image, np.random.default_rng([picture_seed, 1]), truth)
        result = score(judge.read(image), truth)
        for field, ok in result.items():
            n[field] += 1
            right[field] += ok
        if failures is not None and not all(result.values()):
            failures.append((picture_seed, sorted(f for f, ok in result.items() if not ok)))
    return {"accuracy": {f: round(right[f] / n[f], 4) if n[f] else None for f in FIELDS}, "n": n}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--blur", action="store_true", help="also read each picture after degrade()")
    parser.add_argument("--artefacts", action="store_true",
                        help="also read each degraded picture with the toy UNet's background artefacts added")
    parser.add_argument("--haze", type=float, default=HAZE,
                        help="with --artefacts: the check pattern's grey shift per cell (the overfitted LoRA's is stronger)")
    parser.add_argument("--vae", action="store_true", help="also read each picture after the toy autoencoder's round trip")
    parser.add_argument("--unet-sigmas", help="also read each picture after the toy UNet's one-step denoising at each of "
                        "these noise levels (comma-separated sigmas, e.g. 0.05,0.2,0.8)")
    parser.add_argument("--weights", help="with --vae or --unet-sigmas: the folder of the models to use "
                        "(default: the shipped ones)")
    parser.add_argument("--failures", type=int, default=0, help="list this many failing picture seeds per run")
    args = parser.parse_args(argv)
    first = BASE_SEED + args.seed
    out = {"count": args.count, "seed": args.seed, "picture_seeds": [first, first + args.count - 1], "haze": args.haze}
    runs = [("clean", False, None, False)] + ([("degraded", True, None, False)] if args.blur else [])
    runs += [("degraded + artefacts", True, None, True)] if args.artefacts else []
    runs += [("vae round trip", False, vae_round_trip(args.weights), False)] if args.vae else []
    for sigma in [float(s) for s in args.unet_sigmas.split(",")] if args.unet_sigmas else []:
        runs += [(f"unet one step at sigma {sigma:g}", False, unet_denoising(sigma, args.weights), False)]
    for name, blur, transform, artefacts in runs:
        failures: list = []
        out[name] = accuracy(args.count, args.seed, blur, failures, transform, artefacts, args.haze)
        if args.failures:
            out[name]["failures"] = [f"{seed}: {', '.join(fields)}" for seed, fields in failures[:args.failures]]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
