"""The toy world's shipped models: they load through the pack's nodes and ComfyUI's own loaders, draw what the judge
can read, and the training command still trains (skipped without ComfyUI)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from comfy_env import comfyui_path, require_comfyui
from conftest import PACK_NAME, ROOT, toy_world_module

WEIGHTS = ROOT / "nodes" / "toy_world" / "weights"
REFERENCES = ROOT / "nodes" / "toy_world" / "references"


@pytest.fixture(scope="module")
def toy():
    require_comfyui()
    import importlib

    nodes = importlib.import_module(f"{PACK_NAME}.nodes.toy_world_nodes")
    model, clip, vae = nodes.ToyWorldCheckpoint.execute().result
    return nodes, model, clip, vae


def test_the_shipped_weights_fit_the_size_budget_and_name_their_training():
    files = sorted(WEIGHTS.glob("*.safetensors"))
    assert {f.name for f in files} >= {"toy_world_unet.safetensors", "toy_world_clip.safetensors",
                                       "toy_world_vae.safetensors", "toy_world_sks_ball_lora.safetensors"}
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    record = json.loads((WEIGHTS / "training.json").read_text())
    assert record["command"].startswith("python tests/evaluation/toy_world/train.py")
    assert {"vae", "decoder", "base", "lora"} <= set(record["stages"])
    for stage in ("vae", "decoder", "base", "lora"):
        losses = [loss for _, loss in record["stages"][stage]["loss"]]
        quarter = max(1, len(losses) // 4)
        assert np.mean(losses[-quarter:]) < np.mean(losses[:quarter]), stage


def test_the_checkpoint_node_gives_an_sd1_family_model_clip_and_vae(toy):
    nodes, model, clip, vae = toy
    import importlib

    host = importlib.import_module(f"{PACK_NAME}.nodes.comfy_host")
    assert host.model_family(model) == "sd1"
    # 128 px pictures, a 16 x 16 latent: the decoder's full-resolution layers are the only 16 x 16 token grids
    assert host.layer_table(model).default_appearance_layers(16, 16) == ["output.4.0", "output.5.0"]
    # the VAE reproduces a world picture (it was trained on them; an untrained one is off by about a third)
    image, prompt = nodes.ToyWorldReference.execute("red_star_with_black_dots").result
    assert image.shape == (1, 128, 128, 3) and "star" in prompt
    latent = vae.encode(image)
    assert latent.shape == (1, 4, 16, 16)
    assert 2.0 < float(latent.std()) < 12.0  # SD1.x latent statistics (std about 1 / 0.18215)
    decoded = vae.decode(latent)
    assert float((decoded[..., :3] - image).abs().mean()) < 0.1
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize("a star in the snow"))
    assert conditioning[0][0].shape == (1, 77, 64)


def test_the_lora_loads_through_comfyuis_own_lora_loader_with_every_key(toy, tmp_path, caplog):
    nodes, model, clip, vae = toy
    import folder_paths
    import nodes as comfy_nodes

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(nodes.LORA, folder / "toy_world_sks_ball_lora.safetensors")
    folder_paths.add_model_folder_path("loras", str(folder))
    with caplog.at_level(logging.WARNING):
        (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "toy_world_sks_ball_lora.safetensors", 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert len(patched.patches) > 0
    (ours,) = nodes.ToyWorldLoRA.execute(model, 1.0).result
    assert set(ours.patches) == set(patched.patches)


@pytest.mark.xfail(strict=True, reason="the shipped toy model draws the prompted scene, the class in only half its "
                                      "pictures: the judge reads the prompted scene in 100% and the class in 51.7% of "
                                      "them (tests/evaluation/toy_world/README.md)")
def test_the_toy_model_draws_the_prompted_class_and_scene(toy):
    """A few prompts, judged by the world's rules (the full measurement is tests/evaluation/toy_world/evaluate.py)."""
    nodes, model, clip, vae = toy
    import nodes as comfy_nodes

    judge = toy_world_module("judge")
    correct = []
    for cls, scene in (("ball", "on the beach"), ("star", "in the snow"), ("mug", "at night"), ("cube", "on the grass")):
        for seed in range(2):
            text = f"a {cls} {scene}"
            positive = clip.encode_from_tokens_scheduled(clip.tokenize(text))
            negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
            (latent,) = comfy_nodes.common_ksampler(model, seed, 20, 5.0, "euler", "normal", positive, negative,
                                                    {"samples": torch.zeros(1, 4, 16, 16)}, disable_noise=False)
            image = (vae.decode(latent["samples"])[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            reading = judge.read(image)
            correct.append((reading.cls == cls, reading.scene == scene))
    classes, scenes = np.mean([c for c, _ in correct]), np.mean([s for _, s in correct])
    assert classes >= 0.75 and scenes >= 0.75, correct


def test_the_one_step_denoising_is_the_round_trip_at_sigma_0_and_removes_noise_above_it():
    """judge_accuracy.unet_denoising, the diagnosis of where the UNet loses what the judge reads: at sigma 0 it is the
    autoencoder's round trip; at sigma 0.3 its picture is nearer that round trip than the noised latent decoded as it
    is (a UNet that added noise, or ignored it, would not be)."""
    require_comfyui()
    judge_accuracy, world = toy_world_module("judge_accuracy"), toy_world_module("world")
    image, _, truth = world.sample(judge_accuracy.BASE_SEED + 7)
    round_trip = judge_accuracy.vae_round_trip()(image, np.random.default_rng(3), truth).astype(np.int16)
    at_zero = judge_accuracy.unet_denoising(0.0)(image, np.random.default_rng(3), truth).astype(np.int16)
    assert np.abs(at_zero - round_trip).max() <= 1  # the latent scaled in and out again: float rounding only

    sigma = 0.3
    denoised = judge_accuracy.unet_denoising(sigma)(image, np.random.default_rng(3), truth).astype(np.int16)
    models = judge_accuracy._toy_world_models()
    patcher, _, vae = models.load()
    clean = patcher.model.process_latent_in(vae.encode(torch.from_numpy(image).float().div(255).unsqueeze(0)))
    noise = torch.from_numpy(np.random.default_rng(3).standard_normal(clean.shape)).float()
    noisy = vae.decode(patcher.model.process_latent_out(clean + sigma * noise))[0]
    noisy = (noisy.clamp(0, 1) * 255).round().to(torch.int16).numpy()
    assert np.abs(denoised - round_trip).mean() < 0.5 * np.abs(noisy - round_trip).mean()


def _train(out, *arguments: str) -> None:
    """The training command into `out` on one thread, with the ComfyUI under test; fails with its error output."""
    env = dict(os.environ, COMFYUI_PATH=str(comfyui_path()))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "evaluation" / "toy_world" / "train.py"), "--out", str(out),
                           *arguments, "--threads", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_short_run_of_the_training_command_still_lowers_its_loss(tmp_path):
    """Not a retrain: the base stage for a few steps from fresh weights on a few pictures (the shipped VAE encodes
    them), and its logged loss falls."""
    require_comfyui()
    out = tmp_path / "weights"
    out.mkdir()
    shutil.copy(WEIGHTS / "toy_world_vae.safetensors", out)
    _train(out, "--stages", "base", "--images", "64", "--base-steps", "60")
    losses = [loss for _, loss in json.loads((out / "training.json").read_text())["stages"]["base"]["loss"]]
    assert len(losses) == 60
    assert np.mean(losses[-15:]) < 0.9 * np.mean(losses[:15]), losses


def test_a_short_run_of_the_autoencoder_stage_still_lowers_its_loss(tmp_path):
    """Not a retrain: the autoencoder stage (outline-weighted, the default) for a few steps from fresh weights on a
    few pictures, and its logged loss falls."""
    require_comfyui()
    _train(tmp_path, "--stages", "vae", "--images", "32", "--vae-steps", "60")
    record = json.loads((tmp_path / "training.json").read_text())["stages"]["vae"]
    assert record["outline_weight"] == 5.0
    losses = [loss for _, loss in record["loss"]]
    assert np.mean(losses[-15:]) < 0.9 * np.mean(losses[:15]), losses
