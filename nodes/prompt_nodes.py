"""Prompt encoding that records where the subject is among the prompt's tokens."""

from __future__ import annotations

from comfy_api.latest import io

from . import comfy_host


class SubjectPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PickAndDraw_SubjectPrompt",
            display_name="Subject Prompt (Pick-and-Draw)",
            category="pick_and_draw",
            description="CLIP Text Encode that also records which tokens name the subject, for the guidance.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder: the checkpoint's, or the one a LoRA loader gives."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt."),
                io.String.Input("subject", default="dog",
                                tooltip="The subject as written in the prompt: a class noun ('dog'), an identifier with "
                                        "it ('sks dog'), or a Textual-Inversion name ('embedding:my_cat')."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text: str, subject: str) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("clip input is invalid: None (a checkpoint without a text encoder?)")
        info = comfy_host.subject_tokens(clip, text, subject)
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return io.NodeOutput(comfy_host.with_subject(conditioning, info))


NODES = [SubjectPrompt]
