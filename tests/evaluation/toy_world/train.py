#!/usr/bin/env python3
"""Trains the toy world's networks: the autoencoder, the text encoder with the UNet, and the personalised LoRA.

    COMFYUI_PATH=/path/to/ComfyUI python tests/evaluation/toy_world/train.py --out nodes/toy_world/weights

The networks are ComfyUI's own classes (nodes/comfy_host/toy_world_models.py builds them for training and for loading),
trained in the space ComfyUI samples them in: SD1.x's discrete scaled-linear schedule, v-prediction,
latents scaled by SD1.x's latent format. Deterministic for a seed on one device and thread count; the CPU
by default, CUDA with --device cuda. Each stage writes its weights, and training.json records the
configuration, the step counts and the loss log. --stages picks stages (a later stage loads the weights of
the earlier ones from --out); --steps-scale shortens every stage (the test runs a few steps to check that the
loss still falls, without retraining).

Stages:
  vae    the KL autoencoder on random crops of world pictures (L1 + MSE, a small KL term), then its latents
         rescaled to SD1.x's latent statistics (std 1/0.18215), an exact change of the two 1x1 convolutions
         around the latent;
  decoder  the decoder alone, the encoder frozen (the latent space the UNet learns stays as it is);
  base   the UNet and the text encoder together on the world's captioned pictures (10% empty captions for
         classifier-free guidance), with an exponential moving average of the UNet's weights;
  lora   DreamBooth-style: the base UNet fine-tuned through rank-16 LoRA adapters on four pictures of one
         subject ("sks ball": one pose, size and scene), saved in ComfyUI's (Kohya) LoRA key format; trained
         until it overfits as the paper's personalised models do (its pictures keep the training pose and
         scene), since that is the failure Pick-and-Draw is measured on;
  references  the reference pictures (and their prompts) the nodes and workflows ship with.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if __name__ == "__main__":  # run as a script: the toy_world package becomes importable from its parent folder
    sys.path.insert(0, str(HERE.parent))

from toy_world import world  # noqa: E402

SD1_SCALE = 0.18215
PERSONAL_SUBJECT = world.Subject("ball", "purple", "stripes", "white")
PERSONAL_SCENE = "on the grass"
PERSONAL_NAME = "sks ball"


def load_comfy():
    """ComfyUI's modules from COMFYUI_PATH (CPU unless CUDA is asked for), and the toy model builders."""
    path = os.environ.get("COMFYUI_PATH")
    if not path or not (Path(path) / "comfy" / "model_patcher.py").is_file():
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout whose requirements are installed")
    sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    comfy.cli_args.args.use_pytorch_cross_attention = True  # differentiable and fast; the CPU default is sub-quadratic
    spec = importlib.util.spec_from_file_location("toy_world_model", ROOT / "nodes" / "comfy_host" / "toy_world_models.py")
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    return model


class Log:
    """Progress to stdout (flushed: long runs go to a file) and the loss record kept in training.json."""

    def __init__(self):
        self.records: dict[str, list] = {}
        self.started = time.time()

    def __call__(self, stage: str, step: int, total: int, loss: float, every: int):
        self.records.setdefault(stage, []).append([step, round(loss, 6)])
        if step % every == 0 or step == total:
            elapsed = time.time() - self.started
            print(f"[{elapsed:7.0f} s] {stage} step {step}/{total} loss {loss:.5f}", flush=True)


def pictures(count: int, seed: int):
    """(images uint8 [N, 128, 128, 3], captions, subject masks bool [N, 128, 128]) of the training set."""
    images, captions, masks = [], [], []
    for image, text, truth in world.dataset(count, seed):
        images.append(image)
        captions.append(text)
        masks.append(world.subject_mask(truth))
    return np.stack(images), captions, np.stack(masks)


def subject_weights(masks: np.ndarray, weight: float) -> torch.Tensor:
    """Per latent pixel [N, 1, 16, 16]: 1 on the background, up to `weight` on the subject and the latent pixels
    next to it (where a ball's outline and a cube's corners differ). The background, a flat colour per scene,
    is most of the picture and easy; the subject's shape, what the class noun decides, is a few latent pixels."""
    share = torch.nn.functional.avg_pool2d(torch.from_numpy(masks).float()[:, None], 8)  # subject share per latent px
    around = torch.nn.functional.max_pool2d(share, 3, stride=1, padding=1)
    return 1 + (weight - 1) * around


def outline_weights(masks: np.ndarray, weight: float, device) -> torch.Tensor | None:
    """Per pixel [N, 1, H, W] for the autoencoder's reconstruction loss: 1 on the background, `weight` on the subject
    and within 4 px of it, where the outline that tells a ball from a cube is; None when `weight` is 1."""
    if weight == 1.0:
        return None
    near = torch.nn.functional.max_pool2d(torch.from_numpy(masks).float()[:, None], 9, stride=1, padding=4)
    return (1 + (weight - 1) * near).to(device)


def reconstruction_loss(decoded: torch.Tensor, pixels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """L1 + L2 per pixel, weighted (normalised by the weights' mean, so the loss's scale stays that of the uniform one)."""
    error = (decoded - pixels).abs() + (decoded - pixels).pow(2)
    if weights is None:
        return error.mean()
    return (error * weights).mean() / weights.mean()


def to_pixels(images: np.ndarray, device) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in -1..1 (ComfyUI's VAE input convention)."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def cosine_lr(optimizer, step: int, total: int, base: list[float], warmup: int = 100):
    warmup = max(1, min(warmup, total // 10))  # a short run (the test's) warms up for a tenth of its steps
    factor = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    for group, lr in zip(optimizer.param_groups, base):
        group["lr"] = lr * max(factor, 0.02)


def train_vae(toy, images: np.ndarray, steps: int, device, generator: torch.Generator, log: Log,
              masks: np.ndarray | None = None, outline_weight: float = 1.0) -> dict:
    import comfy.ldm.models.autoencoder

    vae = comfy.ldm.models.autoencoder.AutoencoderKL(**toy.VAE_CONFIG).to(device)
    init_weights(vae, generator)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    crop, batch = 64, 12
    for step in range(1, steps + 1):
        cosine_lr(optimizer, step, steps, [2e-3], warmup=30)
        index = torch.randint(len(images), (batch,), generator=generator)
        ys = torch.randint(0, 128 - crop + 1, (batch,), generator=generator)
        xs = torch.randint(0, 128 - crop + 1, (batch,), generator=generator)
        places = list(zip(index.tolist(), ys.tolist(), xs.tolist()))
        pixels = to_pixels(np.stack([images[i, y:y + crop, x:x + crop] for i, y, x in places]), device)
        weights = None if masks is None else outline_weights(
            np.stack([masks[i, y:y + crop, x:x + crop] for i, y, x in places]), outline_weight, device)
        moments = vae.quant_conv(vae.encoder(pixels))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30, 20)
        latent = mean + torch.randn(mean.shape, generator=generator, device="cpu").to(device) * (0.5 * logvar).exp()
        decoded = vae.decoder(vae.post_quant_conv(latent))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = reconstruction_loss(decoded, pixels, weights) + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log("vae", step, steps, float(loss.detach()), 50)
    vae.eval()
    # Rescale the latent to SD1.x's statistics: the quant conv's mean half scaled by a, the post-quant conv's
    # input by 1/a (exact for the mean, which is what ComfyUI's encode returns).
    with torch.no_grad():
        sample = to_pixels(images[:256], device)
        std = torch.cat([vae.quant_conv(vae.encoder(chunk)).chunk(2, dim=1)[0] for chunk in sample.split(32)]).std()
        a = (1 / SD1_SCALE) / float(std)
        vae.quant_conv.weight[:4] *= a
        vae.quant_conv.bias[:4] *= a
        vae.post_quant_conv.weight *= 1 / a
    return {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}


def refine_decoder(toy, vae_state: dict, images: np.ndarray, steps: int, device, generator: torch.Generator, log: Log,
                   masks: np.ndarray | None = None, outline_weight: float = 1.0) -> dict:
    """More training of the decoder alone, the encoder frozen: the latent space (what the UNet is trained on) stays
    exactly as it is, so this can run beside or after the base stage."""
    import comfy.ldm.models.autoencoder

    vae = comfy.ldm.models.autoencoder.AutoencoderKL(**toy.VAE_CONFIG).to(device)
    vae.load_state_dict(vae_state)
    for parameter in [*vae.encoder.parameters(), *vae.quant_conv.parameters()]:
        parameter.requires_grad_(False)
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
    crop, batch = 64, 12
    for step in range(1, steps + 1):
        cosine_lr(optimizer, step, steps, [1e-3], warmup=20)
        index = torch.randint(len(images), (batch,), generator=generator)
        ys = torch.randint(0, (128 - crop) // 8 + 1, (batch,), generator=generator) * 8
        xs = torch.randint(0, (128 - crop) // 8 + 1, (batch,), generator=generator) * 8
        places = list(zip(index.tolist(), ys.tolist(), xs.tolist()))
        pixels = to_pixels(np.stack([images[i, y:y + crop, x:x + crop] for i, y, x in places]), device)
        weights = None if masks is None else outline_weights(
            np.stack([masks[i, y:y + crop, x:x + crop] for i, y, x in places]), outline_weight, device)
        with torch.no_grad():
            mean = vae.quant_conv(vae.encoder(pixels)).chunk(2, dim=1)[0]
        decoded = vae.decoder(vae.post_quant_conv(mean))
        loss = reconstruction_loss(decoded, pixels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log("decoder", step, steps, float(loss.detach()), 50)
    return {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}


def init_weights(module: torch.nn.Module, generator: torch.Generator, std_scale: float = 1.0):
    """ComfyUI's layers skip initialisation (weights are always loaded): a fan-in normal initialisation for
    weights, zeros for biases, and ones for the scales of normalisation layers (found by type: the UNet's
    GroupNorms are named by position, in_layers.0 and the like)."""
    with torch.no_grad():
        for submodule in module.modules():
            if isinstance(submodule, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if submodule.weight is not None:
                    submodule.weight.fill_(1.0)
                if submodule.bias is not None:
                    submodule.bias.zero_()
                continue
            for name, parameter in submodule.named_parameters(recurse=False):
                if parameter.dim() >= 2:
                    fan_in = parameter[0].numel()
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * std_scale / math.sqrt(fan_in))
                else:
                    parameter.zero_()


def encode_images(vae_state: dict, toy, images: np.ndarray, device) -> torch.Tensor:
    """SD1-scaled latents [N, 4, 16, 16] (the encoder's mean, as ComfyUI's VAE encode gives, times 0.18215)."""
    import comfy.ldm.models.autoencoder

    vae = comfy.ldm.models.autoencoder.AutoencoderKL(**toy.VAE_CONFIG).to(device)
    vae.load_state_dict(vae_state)
    vae.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            pixels = to_pixels(images[start:start + 64], device)
            out.append(vae.quant_conv(vae.encoder(pixels)).chunk(2, dim=1)[0].cpu())
    return torch.cat(out) * SD1_SCALE


def caption_tokens(clip, captions: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Token ids [U, 77] of the unique captions and, per caption, the index of its row."""
    unique = sorted(set(captions))
    rows = {text: i for i, text in enumerate(unique)}
    ids = [[token for token, _ in clip.tokenize(text)["l"][0]] for text in unique]
    return torch.tensor(ids), [rows[text] for text in captions]


def unet_loss(model, text_encoder, latents, tokens, generator, device, sigmas, min_snr: float = 0.0,
              pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The v-prediction loss in ComfyUI's sigma space: x = z0 + sigma * eps, through BaseModel.apply_model (which
    feeds the UNet c_in * x and the discrete timestep of sigma, as at sampling, and turns its v into the denoised
    latent). The v error is the denoised error times sqrt(SNR + 1), so the loss weighs each sample's squared
    denoised error by SNR + 1. With min_snr = gamma > 0 that weight is capped at gamma + 1 (Min-SNR, Hang et al.
    2023, arXiv 2303.09556): the easy low-noise steps stop dominating, and the layout and class, decided at high
    noise, are learnt sooner. `pixel_weights` [N, 1, h, w] weigh the squared error over the latent's pixels (each
    sample's weights normalised to mean 1). The same loss trains any parameterisation the model is built with."""
    batch = latents.shape[0]
    t = torch.randint(0, len(sigmas), (batch,), generator=generator)
    sigma = sigmas[t].to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    x = latents + noise * sigma.view(-1, 1, 1, 1)
    context, _ = text_encoder(tokens.tolist())
    denoised = model.apply_model(x, sigma, c_crossattn=context)
    error = (denoised - latents).pow(2)
    if pixel_weights is not None:
        error = error * (pixel_weights / pixel_weights.mean(dim=(1, 2, 3), keepdim=True))
    per_sample = error.mean(dim=(1, 2, 3))
    snr = sigma.pow(-2)
    weight = snr.clamp(max=min_snr) + 1 if min_snr > 0 else snr + 1
    return (per_sample * weight).mean()


def trainable_clip(toy, generator):
    clip = toy.build_clip()
    encoder = clip.cond_stage_model.clip_l
    init_weights(encoder, generator, std_scale=1.0)
    with torch.no_grad():  # token and position embeddings: small, as CLIP's own initialisation
        for name, parameter in encoder.named_parameters():
            if "embedding" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    encoder.float()  # ComfyUI keeps some of the text encoder in float16 for inference; Adam needs float32
    encoder.train()
    for parameter in encoder.parameters():
        parameter.requires_grad_(True)
    for layer in encoder.transformer.text_model.encoder.layers:
        layer.forward = _residual_out_of_place(layer)
    return clip, encoder


def _residual_out_of_place(layer):
    """ComfyUI's CLIP layer adds its residuals in place (inference needs no autograd); training needs the
    same sum out of place. Applied to this training's instances only."""
    def forward(x, mask=None, optimized_attention=None):
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))
    return forward


def train_base(toy, latents, captions, steps: int, device, generator, log: Log, lr: float, min_snr: float,
               resume: tuple[dict, dict] | None = None, pixel_weights: torch.Tensor | None = None):
    """The UNet and the text encoder together; `resume` = (unet, clip) weights to continue from instead of a
    fresh initialisation; `pixel_weights` [N, 1, 16, 16] per picture weigh the loss over the latent's pixels."""
    model = toy.build_unet(device)
    unet = model.diffusion_model
    init_weights(unet, generator)
    with torch.no_grad():  # zero-initialised output convolution: the UNet starts by predicting no noise
        unet.out[-1].weight.zero_()
        unet.out[-1].bias.zero_()
    clip, encoder = trainable_clip(toy, generator)
    if resume is not None:
        unet.load_state_dict(resume[0])
        clip.cond_stage_model.load_state_dict(resume[1], strict=False)
        encoder.float()
    unet.train()
    for parameter in unet.parameters():
        parameter.requires_grad_(True)
    encoder.to(device)
    tokens, rows = caption_tokens(clip, captions)
    rows = torch.tensor(rows)
    sigmas = model.model_sampling.sigmas.detach().float().cpu()
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    optimizer = torch.optim.AdamW([{"params": unet.parameters()}, {"params": encoder.parameters()}],
                                  lr=lr, weight_decay=0.01)
    batch = 32
    for step in range(1, steps + 1):
        cosine_lr(optimizer, step, steps, [lr, lr])
        index = torch.randint(len(latents), (batch,), generator=generator)
        weights = None if pixel_weights is None else pixel_weights[index].to(device)
        loss = unet_loss(model, encoder, latents[index].to(device), tokens[rows[index]], generator, device, sigmas,
                         min_snr, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(encoder.parameters()), 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay) if v.is_floating_point() else ema[k].copy_(v)
        log("base", step, steps, float(loss.detach()), 50)
    clip_state = {k: v.detach().cpu().contiguous() for k, v in clip.cond_stage_model.state_dict().items()}
    return {k: v.cpu().contiguous() for k, v in ema.items()}, clip_state


def lora_targets(unet) -> dict[str, torch.nn.Module]:
    """The transformer blocks' linear layers (attention projections and feed-forward), by their state-dict path."""
    return {name: module for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Linear) and ".transformer_blocks." in name}


def personal_pictures(count: int = 4):
    """The personalised subject's training pictures: one pose, size and scene, only the texture differs."""
    images = []
    for seed in range(count):
        image, _, _ = world.sample(900_000 + seed, subject=PERSONAL_SUBJECT, scene=PERSONAL_SCENE,
                                   position=None, size_word="large")
        images.append(image)
    return np.stack(images)


def train_lora(toy, unet_state, clip_state, vae_state, steps: int, device, generator, log: Log, rank: int,
               lr: float):
    model = toy.build_unet(device)
    unet = model.diffusion_model
    unet.load_state_dict(unet_state)
    unet.eval()
    for parameter in unet.parameters():
        parameter.requires_grad_(False)
    clip = toy.build_clip(clip_state)
    encoder = clip.cond_stage_model.clip_l.to(device)
    images = personal_pictures()
    latents = encode_images(vae_state, toy, images, device)
    text = f"a {PERSONAL_NAME} {PERSONAL_SCENE}"
    tokens = torch.tensor([[token for token, _ in clip.tokenize(text)["l"][0]]])
    sigmas = model.model_sampling.sigmas.detach().float().cpu()
    adapters, handles = {}, []
    for name, module in lora_targets(unet).items():
        down = torch.nn.Parameter(torch.randn(rank, module.in_features, generator=generator) / math.sqrt(module.in_features))
        up = torch.nn.Parameter(torch.zeros(module.out_features, rank))
        adapters[name] = (down, up)
        handles.append(module.register_forward_hook(
            lambda mod, inputs, output, down=down, up=up: output + torch.nn.functional.linear(
                torch.nn.functional.linear(inputs[0], down.to(output.dtype)), up.to(output.dtype))))
    parameters = [p for pair in adapters.values() for p in pair]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    for step in range(1, steps + 1):
        cosine_lr(optimizer, step, steps, [lr], warmup=20)
        index = torch.randint(len(latents), (8,), generator=generator)
        with torch.no_grad():
            context_tokens = tokens.expand(len(index), -1)
        loss = unet_loss(model, lambda ids: encoder(ids), latents[index].to(device), context_tokens, generator, device, sigmas)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log("lora", step, steps, float(loss.detach()), 25)
    for handle in handles:
        handle.remove()
    state = {}
    for name, (down, up) in adapters.items():
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = down.detach().cpu().contiguous()
        state[f"{key}.lora_up.weight"] = up.detach().cpu().contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(rank))  # alpha = rank: the adapter applies at scale 1
    return state, images


# The reference pictures shipped for the nodes and workflows: name -> (subject, scene, prompt of the picture,
# the word that names the subject in it).
REFERENCES = {
    "sks_ball": (PERSONAL_SUBJECT, PERSONAL_SCENE, f"a {PERSONAL_NAME} {PERSONAL_SCENE}"),
    "red_star_with_black_dots": (world.Subject("star", "red", "dots", "black"), "in the snow", "a star in the snow"),
    "blue_mug_with_white_checks": (world.Subject("mug", "blue", "checks", "white"), "on the beach", "a mug on the beach"),
    "yellow_cube_with_black_stripes": (world.Subject("cube", "yellow", "stripes", "black"), "in the desert",
                                       "a cube in the desert"),
}


def write_references(folder: Path) -> None:
    """One large, centred picture per shipped reference (PNG) with its prompt (.txt). The sks ball's is one of
    the LoRA's training pictures, as a DreamBooth user's reference would be."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, (subject, scene, prompt) in REFERENCES.items():
        if subject == PERSONAL_SUBJECT:
            image = personal_pictures(1)[0]
        else:
            image, _, _ = world.sample(910_000 + len(name), subject=subject, scene=scene, position=None, size_word="large")
        Image.fromarray(image).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(prompt + "\n")


def save(path: Path, state: dict, dtype=torch.float16, metadata: dict | None = None):
    from safetensors.torch import save_file

    save_file({k: v.to(dtype) if v.is_floating_point() and v.dim() > 0 else v for k, v in state.items()},
              str(path), metadata=metadata)


def load_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "nodes" / "toy_world" / "weights"))
    parser.add_argument("--stages", default="vae,decoder,base,lora,references")
    parser.add_argument("--references", default=str(ROOT / "nodes" / "toy_world" / "references"),
                        help="where the references stage writes the shipped reference pictures")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=8000, help="training pictures")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--base-steps", type=int, default=4000)
    parser.add_argument("--decoder-steps", type=int, default=500)
    parser.add_argument("--lora-steps", type=int, default=4000)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-lr", type=float, default=2e-3, help="peak learning rate of the LoRA stage")
    parser.add_argument("--base-lr", type=float, default=5e-4, help="peak learning rate of the base stage")
    parser.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR loss weighting of the base stage (0: off)")
    parser.add_argument("--subject-weight", type=float, default=1.0,
                        help="base stage: the loss's weight on the subject and the latent pixels next to it (1: uniform)")
    parser.add_argument("--outline-weight", type=float, default=5.0,
                        help="autoencoder and decoder stages: the reconstruction loss's weight on the subject and "
                             "the pixels within 4 px of it (1: uniform)")
    parser.add_argument("--resume", action="store_true",
                        help="base stage: continue from the UNet and text encoder in --out instead of a fresh start")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every stage's steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    toy = load_comfy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    log = Log()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    steps = {name: max(1, int(getattr(args, f"{name}_steps") * args.steps_scale)) for name in ("vae", "decoder", "base", "lora")}
    record_path = out / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.setdefault("stages", {})
    record["world"] = {"classes": world.CLASSES, "body_colours": list(world.BODY_COLOURS), "patterns": world.PATTERNS,
                       "pattern_colours": list(world.PATTERN_COLOURS), "scenes": list(world.SCENES)}
    record["configs"] = {"unet": toy.UNET_CONFIG, "clip_text": toy.CLIP_TEXT_CONFIG, "vae": toy.VAE_CONFIG}

    images, captions, masks = pictures(args.images, args.seed) if {"vae", "decoder", "base"} & set(stages) else (None,) * 3
    if "vae" in stages:
        started = time.time()
        vae_state = train_vae(toy, images, steps["vae"], device, generator, log, masks, args.outline_weight)
        save(out / "toy_world_vae.safetensors", vae_state)
        record["stages"]["vae"] = {"steps": steps["vae"], "seconds": round(time.time() - started), "images": args.images,
                                   "outline_weight": args.outline_weight, "loss": log.records["vae"]}
    vae_state = load_state(out / "toy_world_vae.safetensors")
    if "decoder" in stages:
        started = time.time()
        vae_state = refine_decoder(toy, vae_state, images, steps["decoder"], device, generator, log, masks,
                                   args.outline_weight)
        save(out / "toy_world_vae.safetensors", vae_state)
        decoder_record = {"steps": steps["decoder"], "seconds": round(time.time() - started),
                          "outline_weight": args.outline_weight, "loss": log.records["decoder"]}
        if "vae" not in stages and "decoder" in record["stages"]:
            decoder_record["after"] = record["stages"]["decoder"]  # the decoder this run continued training
        record["stages"]["decoder"] = decoder_record
    if "base" in stages:
        started = time.time()
        latents = encode_images(vae_state, toy, images, device)
        print(f"encoded {len(latents)} pictures: latent std {float(latents.std()):.3f} (UNet scale)", flush=True)
        resume = None
        if args.resume:
            resume = (load_state(out / "toy_world_unet.safetensors"), load_state(out / "toy_world_clip.safetensors"))
        weights = subject_weights(masks, args.subject_weight) if args.subject_weight != 1.0 else None
        unet_state, clip_state = train_base(toy, latents, captions, steps["base"], device, generator, log,
                                            args.base_lr, args.min_snr, resume, weights)
        save(out / "toy_world_unet.safetensors", unet_state)
        save(out / "toy_world_clip.safetensors", clip_state)
        base_record = {"steps": steps["base"], "seconds": round(time.time() - started), "images": args.images,
                       "batch": 32, "lr": args.base_lr, "min_snr": args.min_snr, "subject_weight": args.subject_weight,
                       "loss": log.records["base"]}
        if args.resume and "base" in record["stages"]:
            base_record["resumed_from"] = record["stages"]["base"]  # the run whose weights this one continued
        record["stages"]["base"] = base_record
    if "lora" in stages:
        started = time.time()
        lora, personal = train_lora(toy, load_state(out / "toy_world_unet.safetensors"),
                                    load_state(out / "toy_world_clip.safetensors"), vae_state, steps["lora"], device,
                                    generator, log, args.lora_rank, args.lora_lr)
        save(out / "toy_world_sks_ball_lora.safetensors", lora, dtype=torch.float16,
             metadata={"subject": PERSONAL_NAME, "scene": PERSONAL_SCENE, "identity": ",".join(PERSONAL_SUBJECT.identity())})
        from PIL import Image

        for i, image in enumerate(personal):
            Image.fromarray(image).save(out / f"sks_ball_training_{i}.png")
        record["stages"]["lora"] = {"steps": steps["lora"], "seconds": round(time.time() - started),
                                    "rank": args.lora_rank, "lr": args.lora_lr, "subject": PERSONAL_NAME,
                                    "scene": PERSONAL_SCENE, "identity": list(PERSONAL_SUBJECT.identity()),
                                    "loss": log.records["lora"]}
    if "references" in stages:
        write_references(Path(args.references))
    command = "python tests/evaluation/toy_world/train.py " + " ".join(sys.argv[1:])
    if "vae" in stages and "base" in stages:  # a run from scratch: the folder's history starts again
        record.pop("runs", None)
    if record.get("runs"):  # weights continued from earlier runs in this folder: keep their commands in order
        record["runs"].append(command)
    else:
        record["command"] = command
    record["torch"] = torch.__version__
    record_path.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
