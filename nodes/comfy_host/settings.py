"""The settings that travel together through the host adapter: one sampling run's, and the guidance's."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """KSampler's settings of one run: what a layout template and the guided run that uses it must share."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float = 1.0

    def facts(self, latent_samples) -> dict:
        """What a layout template must share with the guided run that uses it, as metadata strings."""
        return {"seed": str(int(self.seed)), "steps": str(int(self.steps)), "sampler": self.sampler_name,
                "scheduler": self.scheduler, "denoise": f"{float(self.denoise):.4f}",
                "latent_size": f"{latent_samples.shape[-2]}x{latent_samples.shape[-1]}", "cfg": f"{float(self.cfg):.4f}"}


@dataclasses.dataclass(frozen=True)
class GuidanceSettings:
    """How far each guided step moves (strength) and how each term weighs and when it is on (fractions of the
    steps); the defaults are the engine's. A term whose store is not connected is off whatever its weight."""

    strength: float
    appearance_weight: float = 1.0
    layout_weight: float = 1.0
    appearance_start: float = 0.3
    appearance_end: float = 0.8
    layout_start: float = 0.0
    layout_end: float = 0.5

    def weights(self) -> dict:
        """The engine configuration fields: the weights and windows."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "strength"}
