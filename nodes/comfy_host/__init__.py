"""The host adapter: with the node files, the only code that touches ComfyUI's model and patch APIs.

It translates ComfyUI objects into the native library's terms (layer tables, recorder callbacks) and back; the
native library never sees ComfyUI, only tensors, layer keys and token indices. One module per stage of the data flow:

    reference image -> palette.py          the reference inverted, the subject's appearance features kept per sigma
    vanilla run     -> template.py         the subject's smoothed attention maps per step, and the run's facts
    guided run      -> samplers.py         KSampler's and SamplerCustomAdvanced's guided samplers
                    -> engine.py           the native engine configured from the stores, tokens and weights
                    -> guided_step.py      each step: the pass with gradients, the recorder, the engine's energy
                    -> guidance_update.py  the energy's gradient turned into the denoised estimate's displacement

and the pieces they share: family.py (which UNets, which layers), subject.py (the subject's token positions),
recording.py (the recorder in the model, capture passes, store metadata), guided_pass.py (what a forward pass with
gradients needs from ComfyUI's model), settings.py (a run's sampling settings and the guidance's, each one object).
"""

from .engine import check_finite_store, check_guidance_settings
from .family import layer_table, model_family, unet_layout
from .guidance_update import guidance_direction, guidance_displacement, unit_direction
from .guided_pass import guided_pass_bytes, guided_pass_options, with_differentiable_attention, with_patches_on_copies
from .guided_step import GuidanceRun, guide_model
from .palette import PALETTE_FEATURE_SOURCE, pick_palette, warn_palette_schedule
from .recording import StepLocator, attach_recorder, capture_each_step
from .samplers import guided_cfg_guider, guided_sample, report_unguided_steps
from .settings import GuidanceSettings, SamplingSettings
from .subject import SUBJECT_KEY, recorded_chunks, subject_of, subject_tokens, with_subject, with_subject_entries
from .template import check_template_matches, draw_layout_template, fingerprints_match, noise_fingerprint

__all__ = [
    "PALETTE_FEATURE_SOURCE", "SUBJECT_KEY", "GuidanceRun", "GuidanceSettings", "SamplingSettings", "StepLocator",
    "attach_recorder", "capture_each_step",
    "check_finite_store", "check_guidance_settings", "check_template_matches", "draw_layout_template",
    "fingerprints_match", "guidance_direction", "guidance_displacement", "guide_model", "guided_cfg_guider",
    "guided_pass_bytes", "guided_pass_options", "guided_sample", "layer_table", "model_family", "noise_fingerprint",
    "pick_palette", "recorded_chunks", "report_unguided_steps", "subject_of", "subject_tokens", "unet_layout",
    "unit_direction", "warn_palette_schedule", "with_differentiable_attention", "with_patches_on_copies",
    "with_subject", "with_subject_entries",
]
