#!/usr/bin/env python3
"""The example pipeline, headless: reference image -> palette, vanilla run -> layout template, guided sample.

    COMFYUI_PATH=/path/to/ComfyUI python tests/example_pipeline.py

With no --checkpoint it runs on the toy world the pack ships (its trained model, the personalised "sks ball"
LoRA and the ball's reference picture): for each of four prompts it writes grid_<prompt>.png, one row per seed
(reference | vanilla template | LoRA unguided | Pick-and-Draw), the previews of the palette's mask and of the
template's subject map, and metrics.json with the judge's scores of every picture.

On your own model:

    COMFYUI_PATH=/path/to/ComfyUI python tests/example_pipeline.py \\
        --checkpoint /path/to/v1-5-pruned-emaonly.safetensors --image dog.png \\
        --prompt "a dog wearing a red hat on the beach" --subject dog --out pick_and_draw_out

writes grid.png (template | unguided | guided, same seed), the previews (mask over the reference, token map,
template subject map) and palette.safetensors / layout_template.safetensors. For a DreamBooth/LoRA subject pass
--personalised-checkpoint and --personalised-subject ("sks dog"): the palette and the guided run use it, the
template uses the vanilla --checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as a script: the tests' shared harness and the toy world become importable
    sys.path[:0] = [str(HERE / "python"), str(HERE / "evaluation")]


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    Image.fromarray(array).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="vanilla SD1.x/SD2.x/SDXL checkpoint file; omitted: the toy world")
    parser.add_argument("--personalised-checkpoint", help="DreamBooth checkpoint for the palette and the guided run")
    parser.add_argument("--personalised-subject", help="the subject as the personalised prompt names it, e.g. 'sks dog'")
    parser.add_argument("--image", help="reference image of the subject")
    parser.add_argument("--prompt", default="a dog wearing a red hat on the beach")
    parser.add_argument("--reference-prompt", default="a photo of a dog")
    parser.add_argument("--subject", default="dog", help="class noun as written in the prompts")
    parser.add_argument("--negative", default="blurry, low quality")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--strength", type=float, default=None, help="guidance strength (default: the nodes' default)")
    parser.add_argument("--seeds", type=int, default=4, help="toy world: seeds per prompt")
    parser.add_argument("--out", default="pick_and_draw_out")
    args = parser.parse_args()

    import comfy_env  # finds ComfyUI through COMFYUI_PATH and imports the pack

    try:
        host = comfy_env.require_comfyui()
    except BaseException as exc:  # pytest.skip raises an exception of its own
        print(f"ComfyUI is needed: {exc}", file=sys.stderr)
        return 2
    from conftest import PACK_NAME

    import comfy.sd

    strength = args.strength if args.strength is not None else importlib.import_module(
        f"{PACK_NAME}.nodes.guidance_nodes").DEFAULT_STRENGTH
    if args.checkpoint is None:
        return toy_world_job(Path(args.out), args.seeds, strength, args.steps)
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)
    personal_model, personal_clip, personal_subject = model, clip, args.subject
    if args.personalised_checkpoint:
        personal_model, personal_clip, _, *_ = comfy.sd.load_checkpoint_guess_config(args.personalised_checkpoint)
        personal_subject = args.personalised_subject or args.subject

    def subject_prompt(c, text, subject):
        return host.with_subject(c.encode_from_tokens_scheduled(c.tokenize(text)), host.subject_tokens(c, text, subject))

    if args.image:
        from PIL import Image

        picture = Image.open(args.image).convert("RGB").resize((args.size, args.size))
        reference = torch.from_numpy(__import__("numpy").asarray(picture)).float().div(255).unsqueeze(0)
    else:
        print("--image is needed with --checkpoint: a reference picture of the subject", file=sys.stderr)
        return 2
    personal_prompt = args.prompt.replace(args.subject, personal_subject) if personal_subject != args.subject else args.prompt
    reference_prompt = args.reference_prompt.replace(args.subject, personal_subject)
    positive = subject_prompt(personal_clip, personal_prompt, personal_subject)
    negative = personal_clip.encode_from_tokens_scheduled(personal_clip.tokenize(args.negative))
    vanilla_positive = subject_prompt(clip, args.prompt, args.subject)
    vanilla_negative = clip.encode_from_tokens_scheduled(clip.tokenize(args.negative))
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}

    palette, token_map, mask = host.pick_palette(personal_model, vae, reference,
                                                 subject_prompt(personal_clip, reference_prompt, personal_subject),
                                                 args.steps, "normal")
    template, template_latent, subject_map = host.draw_layout_template(model,
                                                                       host.SamplingSettings(args.seed, args.steps, args.cfg, "euler", "normal"),
                                                                       vanilla_positive, vanilla_negative, latent)
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0}  # the step windows: the nodes' defaults
    runs = {}
    for name, v in (("unguided", 0.0), ("guided", strength)):
        runs[name], _ = host.guided_sample(personal_model,
                                           host.SamplingSettings(args.seed, args.steps, args.cfg, "euler", "normal", 1.0),
                                           positive, negative, latent, palette, template,
                                           host.GuidanceSettings(v, **weights))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [vae.decode(r["samples"])[0] for r in (template_latent, runs["unguided"], runs["guided"])]
    _save_png(torch.cat(images, dim=1), out / "grid.png")
    previews = importlib.import_module(f"{PACK_NAME}.nodes.previews").map_preview
    _save_png(previews(mask.float().unsqueeze(0), args.size, args.size)[0] * 0.7 + reference[0] * 0.3, out / "mask_over_reference.png")
    _save_png(previews(token_map.unsqueeze(0), args.size, args.size)[0], out / "token_map.png")
    _save_png(previews(subject_map[:1], args.size, args.size)[0], out / "template_subject_map.png")
    palette.save(str(out / "palette.safetensors"))
    template.save(str(out / "layout_template.safetensors"))
    print(f"wrote {out}/grid.png (template | unguided | guided), previews, palette and layout template")
    return 0


def toy_world_job(out: Path, seeds: int, strength: float, steps: int) -> int:
    """The pipeline on the toy world: per prompt, a grid of seeds x (reference | template | LoRA | Pick-and-Draw)."""
    import json

    import numpy as np

    from toy_world import judge
    from toy_world.sampling import CLASS, PERSONAL_NAME, PROMPTS, REFERENCE, Toy, iou, prompt_label, prompt_text
    from PIL import Image

    print(f"No --checkpoint: the toy world (its model, the '{PERSONAL_NAME}' LoRA and its reference), strength {strength:g}")
    toy = Toy(steps=steps, cfg=5.0)
    reference = np.asarray(Image.open(toy.toy_nodes.REFERENCES / f"{REFERENCE}.png").convert("RGB"))
    reference_prompt = (toy.toy_nodes.REFERENCES / f"{REFERENCE}.txt").read_text().strip()
    pixels = torch.from_numpy(reference).float().div(255).unsqueeze(0)
    palette, token_map, mask = toy.host.pick_palette(toy.lora_model, toy.vae, pixels,
                                                     toy.positive(reference_prompt, PERSONAL_NAME), toy.steps, "normal")
    out.mkdir(parents=True, exist_ok=True)
    previews = importlib.import_module(f"{toy.toy_nodes.__package__}.previews").map_preview
    size = reference.shape[0]
    _save_png(previews(mask.float().unsqueeze(0), size, size)[0] * 0.7 + pixels[0] * 0.3, out / "mask_over_reference.png")
    _save_png(previews(token_map.unsqueeze(0), size, size)[0], out / "token_map.png")
    truth = judge.read(reference)
    metrics = {"strength": strength, "reference": REFERENCE, "reference_read_as": list(truth.identity()), "pictures": []}
    for scene, position in PROMPTS:
        rows = []
        for seed in range(seeds):
            template, template_latent = toy.template(seed, prompt_text(CLASS, scene, position), CLASS)
            text = prompt_text(PERSONAL_NAME, scene, position)
            pictures = {"template": toy.decode(template_latent),
                        "lora": toy.sample(toy.lora_model, seed, text, PERSONAL_NAME),
                        "pick_and_draw": toy.sample(toy.lora_model, seed, text, PERSONAL_NAME, palette, template, strength)}
            readings = {name: judge.read(image) for name, image in pictures.items()}
            for name, reading in readings.items():
                metrics["pictures"].append({
                    "prompt": text, "seed": seed, "picture": name, "read_as": {
                        "class": reading.cls, "scene": reading.scene, "identity": list(reading.identity()),
                        "box": list(reading.box) if reading.box else None},
                    "identity": float(np.mean([a == b for a, b in zip(reading.identity(), truth.identity())])),
                    "scene_obeyed": reading.scene == scene,
                    "position_obeyed": None if position is None else position in reading.position_words(),
                    "box_iou_with_template": iou(reading.box, readings["template"].box)})
            rows.append(np.concatenate([reference, pictures["template"], pictures["lora"], pictures["pick_and_draw"]], axis=1))
        Image.fromarray(np.concatenate(rows, axis=0)).save(out / f"grid_{prompt_label(scene, position)}.png".replace(" ", "_"))
    summary = {}
    for name in ("template", "lora", "pick_and_draw"):
        chosen = [p for p in metrics["pictures"] if p["picture"] == name]
        summary[name] = {key: float(np.mean([p[key] for p in chosen if p[key] is not None]))
                         for key in ("identity", "scene_obeyed", "position_obeyed", "box_iou_with_template")}
    metrics["summary"] = summary
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    for name, values in summary.items():
        print(f"{name:>14}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    print(f"wrote {out}: grid_<prompt>.png (rows: seeds; columns: reference | template | LoRA | Pick-and-Draw), "
          "mask_over_reference.png, token_map.png, metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
