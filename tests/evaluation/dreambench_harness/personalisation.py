"""Which subjects are personalised, and with what: a JSON file mapping a DreamBench subject to one file.

    {
      "dog":  {"lora": "loras/dog.safetensors", "identifier": "sks", "strength": 1.0},
      "cat":  {"checkpoint": "dreambooth/cat.safetensors", "identifier": "sks"},
      "can":  {"embedding": "embeddings/my_can.pt"}
    }

A LoRA is applied to the base model and its text encoder at ``strength``; a checkpoint is a whole DreamBooth model
(its UNet and text encoder; the base VAE decodes); an embedding is a Textual-Inversion file, named in the prompt as
``embedding:<file name without extension>`` unless ``identifier`` says otherwise. Prompts become
"a <identifier> <class> ..." (DreamBooth's "a [V] dog"). Relative paths are read from the JSON file's folder.
Subjects not in the file use the base model with the class noun alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KINDS = ("lora", "checkpoint", "embedding")


@dataclass(frozen=True)
class Personalisation:
    kind: str  # one of KINDS
    path: Path
    identifier: str
    strength: float = 1.0  # LoRA only: applied to the UNet and the text encoder

    def describe(self) -> dict:
        return {"kind": self.kind, "file": str(self.path), "identifier": self.identifier, "strength": self.strength}


def _entry(subject: str, entry, folder: Path, source: Path) -> Personalisation:
    where = f"{source}, subject '{subject}'"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object like {{\"lora\": \"file.safetensors\", \"identifier\": \"sks\"}}")
    kinds = [k for k in KINDS if k in entry]
    if len(kinds) != 1:
        raise ValueError(f"{where}: give exactly one of {', '.join(KINDS)} (got {', '.join(kinds) or 'none'})")
    unknown = set(entry) - set(KINDS) - {"identifier", "strength"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(KINDS)}, identifier, strength")
    kind = kinds[0]
    path = Path(entry[kind]).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise FileNotFoundError(f"{where}: the {kind} file {path} does not exist")
    identifier = str(entry.get("identifier", f"embedding:{path.stem}" if kind == "embedding" else "")).strip()
    if not identifier:
        raise ValueError(f"{where}: a {kind} needs the 'identifier' it was trained with (DreamBooth's rare token, e.g. \"sks\")")
    if "strength" in entry and kind != "lora":
        raise ValueError(f"{where}: 'strength' applies to a lora only")
    return Personalisation(kind, path, identifier, float(entry.get("strength", 1.0)))


def read_personalisation(path: str | Path | None, subjects: list[str]) -> dict[str, Personalisation]:
    """{subject: Personalisation} from the JSON file (empty without one); unknown subjects are an error."""
    if path is None:
        return {}
    source = Path(path)
    try:
        mapping = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--personalisation {source}: cannot read it as JSON ({exc})") from exc
    if not isinstance(mapping, dict):
        raise ValueError(f"--personalisation {source}: expected an object mapping subject names to files")
    unknown = [name for name in mapping if name not in subjects]
    if unknown:
        raise ValueError(f"--personalisation {source}: {', '.join(unknown)} not among the subjects evaluated "
                         f"({', '.join(subjects)})")
    return {name: _entry(name, entry, source.parent, source) for name, entry in mapping.items()}
