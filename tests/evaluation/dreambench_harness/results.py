"""Where the results go, and how a run resumes.

    <out>/settings.json          what the images were generated with (a resumed run must match it)
    <out>/images/<subject>/...   one PNG per (prompt, seed, strength), written atomically
    <out>/parts/rank<NNN>.csv    each rank's rows, appended and fsync'ed one image at a time
    <out>/results.csv            all rows of the requested jobs, merged by rank 0 at the end

An image is finished when its PNG and its row both exist; a rerun skips finished images and does the rest. A row is
appended only after its PNG is in place, and a PNG appears only whole (written to a temporary name, then renamed),
so a run killed at any point leaves at worst one image to redo. A row torn by the kill is cut off when its rank
reopens the file, and is ignored by readers until then.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

COLUMNS = ("subject", "class", "prompt_index", "prompt", "clip_t_prompt", "seed", "strength", "image", "dino", "clip_i",
           "clip_t")
SETTINGS_FILE = "settings.json"
RESULTS_FILE = "results.csv"
PARTS_FOLDER = "parts"


@dataclass(frozen=True)
class Job:
    """One image: a subject, one of its prompts (index into its prompt list), a seed and a guidance strength."""

    subject: str
    prompt_index: int
    seed: int
    strength: float

    @property
    def group(self) -> tuple[str, int, int]:
        """The jobs of one group share the layout template (drawn once per subject, prompt and seed)."""
        return self.subject, self.prompt_index, self.seed

    def image_path(self) -> str:
        """Relative to the output folder; the strength written with %g, '+' dropped (1e+04 -> 1e04)."""
        strength = f"{self.strength:g}".replace("+", "")
        return f"images/{self.subject}/p{self.prompt_index:02d}_seed{self.seed}_v{strength}.png"


def job_of(row: dict) -> Job | None:
    """The job a CSV row records, or None for a row torn by a killed run."""
    try:
        return Job(row["subject"], int(row["prompt_index"]), int(row["seed"]), float(row["strength"]))
    except (KeyError, TypeError, ValueError):
        return None


def _fsync_and_replace(temporary: Path, final: Path) -> None:
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, final)


def write_image_atomically(pixels: np.ndarray, path: Path) -> None:
    """Saves a uint8 [H, W, 3] array as PNG at path, which never holds a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(pixels).save(temporary, format="PNG")
    _fsync_and_replace(temporary, path)


def write_text_atomically(text: str, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    _fsync_and_replace(temporary, path)


def rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class RankLog:
    """One rank's CSV of finished images: appended a row at a time, each row flushed to disk before the next job."""

    def __init__(self, out: Path, rank: int):
        self.path = out / PARTS_FOLDER / f"rank{rank:03d}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_row()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            self._writer.writeheader()
            self._sync()

    def _cut_torn_row(self) -> None:
        """A run killed while writing leaves a last line without its newline: drop it, or the next row joins it."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "rb+") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, row: dict) -> None:
        self._writer.writerow(row)
        self._sync()

    def close(self) -> None:
        self._file.close()


def _rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if job_of(row) is not None and None not in row.values()]


def finished_rows(out: Path) -> dict[Job, dict]:
    """{job: row} of every finished image in the output folder (all ranks' parts; a later row of a job wins)."""
    finished = {}
    for part in sorted((out / PARTS_FOLDER).glob("rank*.csv")):
        for row in _rows_of(part):
            if (out / row["image"]).is_file():
                finished[job_of(row)] = row
    return finished


def merge(out: Path, jobs: list[Job]) -> list[dict]:
    """Writes results.csv with the finished rows of the requested jobs, in job order; returns those rows."""
    finished = finished_rows(out)
    rows = [finished[job] for job in jobs if job in finished]
    write_text_atomically(rows_csv(rows), out / RESULTS_FILE)
    return rows


def _leaves(settings: dict, prefix: str = "") -> dict:
    """{"sampling.steps": 20, ...}: nested settings flattened, so that a difference names the one setting."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_settings(out: Path, settings: dict, write: bool) -> None:
    """A resumed run must generate as the first did: otherwise its images would mix two experiments. The job list
    (subjects, prompts, seeds, strengths) may change; what makes an image may not."""
    path = out / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
    if path.is_file():
        recorded, current = _leaves(json.loads(path.read_text())), _leaves(settings)
        differ = [f"{key} {recorded.get(key)!r} then, {current.get(key)!r} now"
                  for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]
        if differ:
            raise ValueError(f"--out {out} holds images generated with other settings ({'; '.join(differ)}): "
                             "use another --out folder, or the settings of the first run to resume it")
    elif write:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(json.dumps(settings, indent=1, sort_keys=True) + "\n", path)
