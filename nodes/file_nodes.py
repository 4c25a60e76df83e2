"""Save and load palettes and layout templates as .safetensors files in ComfyUI's folders.

Saved files go to ComfyUI's output folder (default prefix pickdraw/...); loaders list the files in the
pickdraw/ subfolders of the input folder and of the output folder (those marked " [output]", ComfyUI's own
annotation), so a saved file can be loaded back at once. A name that resolves outside those folders is refused.
"""

from __future__ import annotations

import hashlib
import os
import time

import folder_paths
from comfy_api.latest import io

from . import comfy_host, ops
from .types import LayoutTemplate, Palette

SUBFOLDER = "pickdraw"
CATEGORY = "pick_and_draw/files"


def _inside(folder: str, path: str, label: str) -> str:
    real_folder = os.path.realpath(folder)
    real_path = os.path.realpath(path)
    if os.path.commonpath([real_folder, real_path]) != real_folder:
        raise ValueError(f"'{path}' points outside ComfyUI's {label} folder ({folder}); pick a file inside it")
    return real_path


# ComfyUI's annotation for a file of its output folder in a file list (as LoadImage's lists use it).
OUTPUT_MARK = " [output]"


def _files_under(folder: str) -> list[str]:
    """'pickdraw/<name>.safetensors' for every such file under the folder's pickdraw/ subfolder."""
    found = []
    for root, _, files in os.walk(os.path.join(folder, SUBFOLDER)):
        for name in files:
            if name.endswith(".safetensors"):
                found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(found)


def _stored_files() -> list[str]:
    """The files a loader offers: those in input/pickdraw, then those in output/pickdraw marked as such."""
    return (_files_under(folder_paths.get_input_directory()) +
            [name + OUTPUT_MARK for name in _files_under(folder_paths.get_output_directory())])


def _input_path(file: str) -> str:
    """The path of a loader's file: under the output folder when marked so, else under the input folder."""
    if file.endswith(OUTPUT_MARK):
        folder, label = folder_paths.get_output_directory(), "output"
        file = file[:-len(OUTPUT_MARK)]
    else:
        folder, label = folder_paths.get_input_directory(), "input"
    return _inside(folder, os.path.join(folder, file), label)


# A write leaves <name>.safetensors.tmp-<pid>-<n> only while it runs (it is renamed into place when complete); one
# older than this was left by a killed process.
_STALE_TEMPORARY_SECONDS = 600


def _remove_stale_temporaries(folder: str) -> None:
    now = time.time()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if ".safetensors.tmp-" in name and os.path.isfile(path) and now - os.path.getmtime(path) > _STALE_TEMPORARY_SECONDS:
            os.remove(path)


def _save(store, filename_prefix: str, default_prefix: str) -> str:
    """Writes the store under the output folder as <prefix>_<counter>_.safetensors: an empty prefix means the
    default one, a name is never hidden, and an existing file is never overwritten (the counter moves on)."""
    folder, name = os.path.split(filename_prefix.strip() or default_prefix)
    prefix = os.path.join(folder, name.lstrip(".") or os.path.basename(default_prefix))  # never a hidden file
    output_dir = folder_paths.get_output_directory()
    full_folder, filename, counter, _, _ = folder_paths.get_save_image_path(prefix, output_dir)
    os.makedirs(full_folder, exist_ok=True)
    _remove_stale_temporaries(full_folder)
    while True:
        path = _inside(output_dir, os.path.join(full_folder, f"{filename}_{counter:05}_.safetensors"), "output")
        if not os.path.exists(path):
            break
        counter += 1
    store.save(path)
    return os.path.relpath(path, output_dir)


def _file_fingerprint(file: str) -> str:
    path = _input_path(file)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _validate_file(file: str) -> bool | str:
    try:
        path = _input_path(file)
    except ValueError as exc:
        return str(exc)
    return True if os.path.isfile(path) else f"file not found: {file} (put it in ComfyUI's input/{SUBFOLDER} folder)"


class _SaveStore(io.ComfyNode):
    """A Save node: writes its input store (named INPUT_NAME) under the output folder."""

    NODE_ID = DISPLAY_NAME = INPUT_NAME = WHAT = ""
    SOCKET = None

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=f"Writes a {cls.WHAT} to ComfyUI's output folder as a .safetensors file.",
            inputs=[
                cls.SOCKET.Input(cls.INPUT_NAME, tooltip=f"The {cls.WHAT} to save."),
                io.String.Input("filename_prefix", default=f"{SUBFOLDER}/{cls.INPUT_NAME}",
                                tooltip="Path under the output folder; a counter and .safetensors are appended, and "
                                        "an existing file is never overwritten. Empty: the default. The Load node "
                                        f"lists it (marked{OUTPUT_MARK}) when it is under {SUBFOLDER}/."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, filename_prefix: str, **store) -> io.NodeOutput:
        written = _save(store[cls.INPUT_NAME], filename_prefix, f"{SUBFOLDER}/{cls.INPUT_NAME}")
        return io.NodeOutput(ui={"text": [written]})


class _LoadStore(io.ComfyNode):
    """A Load node: reads a store file of input/pickdraw or output/pickdraw with READ and checks its values."""

    NODE_ID = DISPLAY_NAME = OUTPUT_NAME = WHAT = ""
    SOCKET = None

    @staticmethod
    def read(path: str):
        raise NotImplementedError("a Load node names the reader of its store type")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=f"Reads a {cls.WHAT} from ComfyUI's input/{SUBFOLDER} or output/{SUBFOLDER} folder.",
            inputs=[io.Combo.Input("file", options=_stored_files(),
                                   tooltip=f"A {cls.WHAT} file in input/{SUBFOLDER}, or one saved to output/{SUBFOLDER} "
                                           f"(marked{OUTPUT_MARK}).")],
            outputs=[cls.SOCKET.Output(display_name=cls.OUTPUT_NAME)],
        )

    @classmethod
    def validate_inputs(cls, file: str) -> bool | str:
        return _validate_file(file)

    @classmethod
    def fingerprint_inputs(cls, file: str) -> str:
        return _file_fingerprint(file)

    @classmethod
    def execute(cls, file: str) -> io.NodeOutput:
        store = cls.read(_input_path(file))
        comfy_host.check_finite_store(store, f"{cls.WHAT} file {file}")
        return io.NodeOutput(store)


# Node IDs are an API: never rename one.
class SavePalette(_SaveStore):
    NODE_ID, DISPLAY_NAME = "PickAndDraw_SavePalette", "Save Palette (Pick-and-Draw)"
    SOCKET, INPUT_NAME, WHAT = Palette, "palette", "palette"


class LoadPalette(_LoadStore):
    NODE_ID, DISPLAY_NAME = "PickAndDraw_LoadPalette", "Load Palette (Pick-and-Draw)"
    SOCKET, OUTPUT_NAME, WHAT = Palette, "palette", "palette"
    read = staticmethod(ops.Palette.load)


class SaveLayoutTemplate(_SaveStore):
    NODE_ID, DISPLAY_NAME = "PickAndDraw_SaveLayoutTemplate", "Save Layout Template (Pick-and-Draw)"
    SOCKET, INPUT_NAME, WHAT = LayoutTemplate, "layout_template", "layout template"


class LoadLayoutTemplate(_LoadStore):
    NODE_ID, DISPLAY_NAME = "PickAndDraw_LoadLayoutTemplate", "Load Layout Template (Pick-and-Draw)"
    SOCKET, OUTPUT_NAME, WHAT = LayoutTemplate, "layout_template", "layout template"
    read = staticmethod(ops.LayoutTemplate.load)


NODES = [SavePalette, LoadPalette, SaveLayoutTemplate, LoadLayoutTemplate]
