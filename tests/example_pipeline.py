#!/usr/bin/env python3
"""The example pipeline, headless: reference image -> palette, vanilla run -> layout template, guided sample.

    COMFYUI_PATH=/path/to/ComfyUI python tests/example_pipeline.py \\
        --checkpoint /path/to/v1-5-pruned-emaonly.safetensors --image dog.png \\
        --prompt "a dog wearing a red hat on the beach" --subject dog --out pick_and_draw_out

It writes grid.png (template | unguided | guided, same seed), the previews (mask over the reference, token
map, template subject map) and palette.safetensors / layout_template.safetensors. Without --checkpoint it runs
on a tiny SD1.x-shaped model with random weights (and a random reference image without --image): the pictures
then only prove that the pipeline runs, not what the method does. For a DreamBooth/LoRA subject pass
--personalised-checkpoint and --personalised-subject ("sks dog"): the palette and the guided run use it, the
template uses the vanilla --checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "python"))


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    Image.fromarray(array).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="vanilla SD1.x/SD2.x/SDXL checkpoint file; omitted: a tiny random model")
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
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--out", default="pick_and_draw_out")
    args = parser.parse_args()

    import comfy_env  # finds ComfyUI through COMFYUI_PATH and imports the pack

    try:
        host = comfy_env.require_comfyui()
    except BaseException as exc:  # pytest.skip raises an exception of its own
        print(f"ComfyUI is needed: {exc}", file=sys.stderr)
        return 2
    import importlib

    from conftest import PACK_NAME

    ops = importlib.import_module(f"{PACK_NAME}.nodes.ops")
    import comfy.sd

    tiny = args.checkpoint is None
    if tiny:
        print("No --checkpoint: using a tiny random SD1.x-shaped model. The images only prove that the pipeline runs.")
        model, clip, vae = comfy_env.sharpen_cross_attention(comfy_env.tiny_sd1_patcher()), comfy_env.tiny_clip(), comfy_env.PoolingVae()
        args.size, args.steps = min(args.size, 128), min(args.steps, 6)
        strength = args.strength if args.strength != 1.0 else 1e4
    else:
        model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)
        strength = args.strength
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
        reference = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
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
    template, template_latent, subject_map = host.draw_layout_template(
        model, args.seed, args.steps, args.cfg, "euler", "normal", vanilla_positive, vanilla_negative, latent)
    weights = {"appearance_weight": 1.0, "layout_weight": 1.0, "appearance_end": 0.8, "layout_end": 0.5}
    runs = {}
    for name, v in (("unguided", 0.0), ("guided", strength)):
        runs[name], _ = host.guided_sample(personal_model, args.seed, args.steps, args.cfg, "euler", "normal", positive,
                                           negative, latent, 1.0, palette, template, weights, v)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    decode = vae.decode if not tiny else (lambda s: torch.nn.functional.interpolate(s[:, :3], scale_factor=8).movedim(1, -1).sigmoid())
    images = [decode(r["samples"])[0] for r in (template_latent, runs["unguided"], runs["guided"])]
    _save_png(torch.cat(images, dim=1), out / "grid.png")
    import importlib as _il

    previews = _il.import_module(f"{PACK_NAME}.nodes.template_nodes").map_preview
    _save_png(previews(mask.float().unsqueeze(0), args.size, args.size)[0] * 0.7 + reference[0] * 0.3, out / "mask_over_reference.png")
    _save_png(previews(token_map.unsqueeze(0), args.size, args.size)[0], out / "token_map.png")
    _save_png(previews(subject_map[:1], args.size, args.size)[0], out / "template_subject_map.png")
    palette.save(str(out / "palette.safetensors"))
    template.save(str(out / "layout_template.safetensors"))
    print(f"wrote {out}/grid.png (template | unguided | guided), previews, palette and layout template"
          + (" -- tiny random model: the pictures only prove the pipeline runs" if tiny else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
