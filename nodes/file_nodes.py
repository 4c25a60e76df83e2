"""Save and load palettes and layout templates as .safetensors files in ComfyUI's folders.

Saved files go to ComfyUI's output folder (default prefix pickdraw/...); loaders list the files in the
input folder's pickdraw/ subfolder. A name that resolves outside those folders is refused.
"""

from __future__ import annotations

import hashlib
import os

import folder_paths
from comfy_api.latest import io

from . import ops
from .types import LayoutTemplate, Palette

SUBFOLDER = "pickdraw"
CATEGORY = "pick_and_draw/files"


def _inside(folder: str, path: str, label: str) -> str:
    real_folder = os.path.realpath(folder)
    real_path = os.path.realpath(path)
    if os.path.commonpath([real_folder, real_path]) != real_folder:
        raise ValueError(f"'{path}' points outside ComfyUI's {label} folder ({folder}); pick a file inside it")
    return real_path


def _input_files() -> list[str]:
    """'pickdraw/<name>.safetensors' for every such file under the input folder's pickdraw/ subfolder."""
    base = os.path.join(folder_paths.get_input_directory(), SUBFOLDER)
    found = []
    for root, _, files in os.walk(base):
        for name in files:
            if name.endswith(".safetensors"):
                found.append(os.path.relpath(os.path.join(root, name), folder_paths.get_input_directory()).replace(os.sep, "/"))
    return sorted(found)


def _input_path(file: str) -> str:
    folder = folder_paths.get_input_directory()
    return _inside(folder, os.path.join(folder, file), "input")


def _save(store, filename_prefix: str) -> str:
    output_dir = folder_paths.get_output_directory()
    full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
    path = _inside(output_dir, os.path.join(full_folder, f"{filename}_{counter:05}_.safetensors"), "output")
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


def _save_node(node_id: str, display_name: str, socket, input_name: str, what: str) -> type[io.ComfyNode]:
    class SaveNode(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=node_id,
                display_name=display_name,
                category=CATEGORY,
                description=f"Writes a {what} to ComfyUI's output folder as a .safetensors file.",
                inputs=[
                    socket.Input(input_name, tooltip=f"The {what} to save."),
                    io.String.Input("filename_prefix", default=f"{SUBFOLDER}/{input_name}",
                                    tooltip="Path under the output folder; a counter and .safetensors are appended."),
                ],
                outputs=[],
                is_output_node=True,
            )

        @classmethod
        def execute(cls, filename_prefix: str, **store) -> io.NodeOutput:
            return io.NodeOutput(ui={"text": [_save(store[input_name], filename_prefix)]})

    SaveNode.__name__ = SaveNode.__qualname__ = node_id
    return SaveNode


def _load_node(node_id: str, display_name: str, socket, output_name: str, what: str, load) -> type[io.ComfyNode]:
    class LoadNode(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=node_id,
                display_name=display_name,
                category=CATEGORY,
                description=f"Reads a {what} from ComfyUI's input/{SUBFOLDER} folder.",
                inputs=[io.Combo.Input("file", options=_input_files(), tooltip=f"A {what} file in input/{SUBFOLDER}.")],
                outputs=[socket.Output(display_name=output_name)],
            )

        @classmethod
        def validate_inputs(cls, file: str) -> bool | str:
            return _validate_file(file)

        @classmethod
        def fingerprint_inputs(cls, file: str) -> str:
            return _file_fingerprint(file)

        @classmethod
        def execute(cls, file: str) -> io.NodeOutput:
            return io.NodeOutput(load(_input_path(file)))

    LoadNode.__name__ = LoadNode.__qualname__ = node_id
    return LoadNode


# Node IDs are an API: never rename one.
SavePalette = _save_node("PickAndDraw_SavePalette", "Save Palette (Pick-and-Draw)", Palette, "palette", "palette")
LoadPalette = _load_node("PickAndDraw_LoadPalette", "Load Palette (Pick-and-Draw)", Palette, "palette", "palette",
                         ops.Palette.load)
SaveLayoutTemplate = _save_node("PickAndDraw_SaveLayoutTemplate", "Save Layout Template (Pick-and-Draw)",
                                LayoutTemplate, "layout_template", "layout template")
LoadLayoutTemplate = _load_node("PickAndDraw_LoadLayoutTemplate", "Load Layout Template (Pick-and-Draw)",
                                LayoutTemplate, "layout_template", "layout template", ops.LayoutTemplate.load)

NODES = [SavePalette, LoadPalette, SaveLayoutTemplate, LoadLayoutTemplate]
