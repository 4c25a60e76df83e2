"""DreamBench as the DreamBooth authors publish it (Ruiz et al., arXiv 2208.12242; the dataset/ folder of the
google/dreambooth repository): one folder per subject holding its photos, next to ``prompts_and_classes.txt``,
which lists each subject's class and the 25 object prompts and 25 live-subject prompts as Python format strings
``'a {0} {1} in the jungle'.format(unique_token, class_token)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROMPTS_FILE = "prompts_and_classes.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# DreamBooth gives the live-subject prompts (outfits, hats) to its live subjects, the dogs and cats; every other
# class, "stuffed animal" included, gets the object prompts.
LIVE_CLASSES = ("cat", "dog")

_QUOTED_FORMAT = re.compile(r"""(['"])(.*?)\1\s*\.format\(""")


@dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str
    live: bool
    images: tuple[Path, ...]  # sorted by file name; the first is the reference the palette is picked from


@dataclass(frozen=True)
class DreamBench:
    root: Path
    subjects: tuple[Subject, ...]
    object_prompts: tuple[str, ...]  # format strings: {0} the identifier, {1} the class noun
    live_prompts: tuple[str, ...]

    def prompts_for(self, subject: Subject) -> tuple[str, ...]:
        return self.live_prompts if subject.live else self.object_prompts

    def subject(self, name: str) -> Subject:
        for subject in self.subjects:
            if subject.name == name:
                return subject
        raise KeyError(name)


def format_prompt(template: str, identifier: str, class_noun: str) -> str:
    """The prompt for an identifier ("sks", or "" for the class noun alone) and a class; no doubled spaces."""
    return " ".join(template.format(identifier, class_noun).split())


def _prompt_list(lines: list[str], heading: str, source: Path) -> tuple[str, ...]:
    """The quoted format strings of the first ``prompt_list = [...]`` after the heading line."""
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().lower() == heading.lower())
    except StopIteration:
        raise ValueError(f"{source} has no '{heading}' section: is it DreamBench's prompts_and_classes.txt?") from None
    prompts = []
    for line in lines[start + 1:]:
        match = _QUOTED_FORMAT.search(line)
        if match:
            prompts.append(match.group(2))
        elif line.strip() == "]" and prompts:
            break
    if not prompts:
        raise ValueError(f"{source}: the '{heading}' section lists no prompt")
    return tuple(prompts)


def parse_prompts_and_classes(text: str, source: Path = Path(PROMPTS_FILE)):
    """(list of (subject, class), object prompts, live prompts) from the text of prompts_and_classes.txt."""
    lines = text.splitlines()
    try:
        header = next(i for i, line in enumerate(lines) if line.strip().replace(" ", "") == "subject_name,class")
    except StopIteration:
        raise ValueError(f"{source} has no 'subject_name,class' table: is it DreamBench's prompts_and_classes.txt?") from None
    classes = []
    for line in lines[header + 1:]:
        if not line.strip():
            if classes:
                break
            continue
        name, _, class_noun = line.partition(",")
        if not class_noun.strip():
            break
        classes.append((name.strip(), class_noun.strip()))
    if not classes:
        raise ValueError(f"{source}: the subject_name,class table is empty")
    return classes, _prompt_list(lines, "Object Prompts", source), _prompt_list(lines, "Live Subject Prompts", source)


def _dataset_folder(root: Path) -> Path:
    """The folder holding prompts_and_classes.txt: ``root`` itself, or ``root/dataset`` (a clone of the repository)."""
    for candidate in (root, root / "dataset"):
        if (candidate / PROMPTS_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"--dataset {root}: no {PROMPTS_FILE} there (nor in {root / 'dataset'}); point --dataset at "
                            "your copy of DreamBench in its original layout: a folder per subject with its photos, "
                            f"next to {PROMPTS_FILE}")


def read_dreambench(root: str | Path, live_classes=LIVE_CLASSES, only: list[str] | None = None) -> DreamBench:
    """Reads a copy of DreamBench in its original layout, with all its subjects or those named in ``only`` (in the
    benchmark's order); names every unknown subject and every subject whose folder of photos is missing."""
    folder = _dataset_folder(Path(root))
    classes, object_prompts, live_prompts = parse_prompts_and_classes((folder / PROMPTS_FILE).read_text(), folder / PROMPTS_FILE)
    if only:
        known = {name for name, _ in classes}
        unknown = [name for name in only if name not in known]
        if unknown:
            raise ValueError(f"--subjects: {', '.join(unknown)} not in DreamBench; its subjects are {', '.join(sorted(known))}")
        classes = [(name, class_noun) for name, class_noun in classes if name in only]
    subjects, missing = [], []
    for name, class_noun in classes:
        images = tuple(sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)) \
            if (folder / name).is_dir() else ()
        if not images:
            missing.append(name)
            continue
        subjects.append(Subject(name, class_noun, class_noun in live_classes, images))
    if missing:
        raise FileNotFoundError(
            f"--dataset {folder}: no folder of photos for subject(s) {', '.join(missing)}. DreamBench's original layout "
            f"has one folder per subject ({missing[0]}/00.jpg, ...) next to {PROMPTS_FILE}; a flattened copy with one "
            "image per subject is not enough (the DINO and CLIP-I scores compare with all of a subject's photos)")
    return DreamBench(folder, tuple(subjects), object_prompts, live_prompts)
