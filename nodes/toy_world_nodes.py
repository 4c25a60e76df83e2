"""The toy world in ComfyUI: its trained checkpoint, its reference pictures and its personalised LoRA.

The toy world (tests/evaluation/toy_world/) is a procedural world of one subject in a scene whose models the pack
trains and ships, so that every workflow can be queued right after install, with no downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from comfy_api.latest import io

from .comfy_host import toy_world_models as toy_model

REFERENCES = Path(__file__).resolve().parent / "toy_world" / "references"
LORA = toy_model.WEIGHTS / "toy_world_sks_ball_lora.safetensors"


def _reference_names() -> list[str]:
    return sorted(path.stem for path in REFERENCES.glob("*.png")) or ["(no reference pictures shipped)"]


class ToyWorldCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_ToyWorldCheckpoint",
            display_name="Toy World Checkpoint (Pick-and-Draw)",
            category="pick_and_draw/toy_world",
            description="The pack's own tiny text-to-image model of the toy world (128 x 128 pictures of a ball, cube, "
                        "star or mug in a scene), trained by the pack: for trying the nodes with no downloads.",
            inputs=[],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*toy_model.load())


class ToyWorldReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_ToyWorldReference",
            display_name="Toy World Reference (Pick-and-Draw)",
            category="pick_and_draw/toy_world",
            description="A reference picture of one toy-world subject, and the prompt that describes it.",
            inputs=[io.Combo.Input("reference", options=_reference_names(),
                                   tooltip="The subject whose appearance the palette picks.")],
            outputs=[io.Image.Output(display_name="image"), io.String.Output(display_name="prompt")],
        )

    @classmethod
    def execute(cls, reference) -> io.NodeOutput:
        from PIL import Image

        path = REFERENCES / f"{reference}.png"
        if not path.is_file():
            raise ValueError(f"no toy-world reference named '{reference}'; the shipped ones are: {', '.join(_reference_names())}")
        picture = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        prompt = (REFERENCES / f"{reference}.txt").read_text().strip()
        return io.NodeOutput(torch.from_numpy(picture).unsqueeze(0), prompt)


class ToyWorldLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_ToyWorldLoRA",
            display_name="Toy World LoRA (Pick-and-Draw)",
            category="pick_and_draw/toy_world",
            description="Applies the toy world's personalised LoRA ('sks ball', fine-tuned DreamBooth-style on four "
                        "pictures in one pose and scene) with ComfyUI's own LoRA code, as Load LoRA does.",
            inputs=[io.Model.Input("model", tooltip="The Toy World Checkpoint's MODEL."),
                    io.Float.Input("strength_model", default=1.0, min=-4.0, max=4.0, step=0.05,
                                   tooltip="LoRA strength, as in Load LoRA.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, strength_model) -> io.NodeOutput:
        import comfy.sd
        import comfy.utils

        if not LORA.is_file():
            raise FileNotFoundError(f"the toy world's LoRA is missing ({LORA}): reinstall the pack")
        lora = comfy.utils.load_torch_file(str(LORA), safe_load=True)
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength_model, 0)
        return io.NodeOutput(patched)


NODES = [ToyWorldCheckpoint, ToyWorldReference, ToyWorldLoRA]
