"""The pack in real ComfyUI: loaded by its own custom-node loader; the palette/template file nodes."""

from __future__ import annotations

import asyncio
import importlib

import pytest
import torch

from comfy_env import require_comfyui
from conftest import PACK_NAME, ROOT

NODE_IDS = ["PickAndDraw_SubjectPrompt", "PickAndDraw_PickPalette", "PickAndDraw_DrawLayoutTemplate", "PickAndDraw_GuidedKSampler", "PickAndDraw_Guider", "PickAndDraw_SavePalette", "PickAndDraw_LoadPalette", "PickAndDraw_SaveLayoutTemplate", "PickAndDraw_LoadLayoutTemplate"]


@pytest.fixture(scope="module")
def comfy_nodes():
    require_comfyui()
    comfy_nodes_module = importlib.import_module("nodes")  # ComfyUI's own nodes.py
    assert asyncio.run(comfy_nodes_module.load_custom_node(str(ROOT))), "ComfyUI's loader refused the pack"
    return comfy_nodes_module


@pytest.fixture
def folders(tmp_path):
    import folder_paths

    saved = folder_paths.get_output_directory(), folder_paths.get_input_directory()
    (tmp_path / "output").mkdir()
    (tmp_path / "input" / "pickdraw").mkdir(parents=True)
    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(tmp_path / "input"))
    yield tmp_path
    folder_paths.set_output_directory(saved[0])
    folder_paths.set_input_directory(saved[1])


def _palette(ops):
    m = ops.GuidanceMetadata()
    m.model_family = "sd1"
    m.layer_keys = ["output.3.0"]
    m.sigmas = [3.0, 1.0]
    m.tokens = ops.SubjectTokens("dog", "a dog", [2])
    p = ops.Palette(m)
    for i in range(2):
        p.set(i, "output.3.0", torch.randn(5, 8))
    return p


def test_the_pack_loads_through_comfyuis_loader(comfy_nodes):
    for node_id in NODE_IDS:
        assert node_id in comfy_nodes.NODE_CLASS_MAPPINGS, node_id
        assert "Pick-and-Draw" in comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    # every input of every node of the pack says what it does (the UI shows it on hover)
    untold = [f"{node_id}.{name}" for node_id, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items() if node_id.startswith("PickAndDraw_")
              for group in ("required", "optional") for name, spec in cls.INPUT_TYPES().get(group, {}).items()
              if not (len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("tooltip"))]
    assert not untold, untold


def test_palette_save_then_load(ops, comfy_nodes, folders):
    save = comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_SavePalette"]
    load = comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_LoadPalette"]
    palette = _palette(ops)
    out = save.execute(palette=palette, filename_prefix="pickdraw/dog")
    saved = folders / "output" / out.ui["text"][0]
    assert saved.is_file() and saved.name.endswith(".safetensors")
    (folders / "input" / "pickdraw" / saved.name).write_bytes(saved.read_bytes())
    name = f"pickdraw/{saved.name}"
    assert name in load.define_schema().inputs[0].options
    assert load.validate_inputs(file=name) is True
    loaded = load.execute(file=name).result[0]
    assert torch.equal(loaded.get(1, "output.3.0"), palette.get(1, "output.3.0"))
    assert load.fingerprint_inputs(file=name) == load.fingerprint_inputs(file=name)


def test_a_saved_palette_loads_back_from_the_output_folder(ops, comfy_nodes, folders):
    """The loader lists output/pickdraw too (marked ' [output]', ComfyUI's annotation), so Save then Load round
    trips without copying the file; a marked name cannot leave the output folder."""
    save = comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_SavePalette"]
    load = comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_LoadPalette"]
    palette = _palette(ops)
    saved = save.execute(palette=palette, filename_prefix="").ui["text"][0]
    name = f"{saved} [output]"
    assert name in load.define_schema().inputs[0].options
    assert load.validate_inputs(file=name) is True
    torch.testing.assert_close(load.execute(file=name).result[0].get(0, "output.3.0"), palette.get(0, "output.3.0"))
    assert "outside ComfyUI's output folder" in load.validate_inputs(file="../input/pickdraw/x.safetensors [output]")


def test_template_save_then_load(ops, comfy_nodes, folders):
    m = _palette(ops).metadata
    template = ops.LayoutTemplate(m)
    for i in range(2):
        template.set(i, "output.3.0", torch.rand(1, 8, 8))
    out = comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_SaveLayoutTemplate"].execute(layout_template=template, filename_prefix="pickdraw/layout")
    saved = folders / "output" / out.ui["text"][0]
    (folders / "input" / "pickdraw" / saved.name).write_bytes(saved.read_bytes())
    loaded = comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_LoadLayoutTemplate"].execute(file=f"pickdraw/{saved.name}").result[0]
    assert torch.equal(loaded.get(0, "output.3.0"), template.get(0, "output.3.0"))


def test_paths_outside_the_folders_and_bad_files_are_refused(ops, comfy_nodes, folders):
    load = comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_LoadPalette"]
    assert "outside ComfyUI's input folder" in load.validate_inputs(file="../../etc/passwd")
    assert "file not found" in load.validate_inputs(file="pickdraw/missing.safetensors")
    with pytest.raises(Exception, match="outside the output folder"):
        comfy_nodes.NODE_CLASS_MAPPINGS["PickAndDraw_SavePalette"].execute(palette=_palette(ops), filename_prefix="../escape")
    (folders / "input" / "pickdraw" / "bad.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"not json at all!")
    with pytest.raises(ValueError, match="malformed safetensors file"):
        load.execute(file="pickdraw/bad.safetensors")
    # A template file is not a palette.
    m = _palette(ops).metadata
    template = ops.LayoutTemplate(m)
    for i in range(2):
        template.set(i, "output.3.0", torch.rand(1, 4, 4))
    template.save(str(folders / "input" / "pickdraw" / "layout.safetensors"))
    with pytest.raises(ValueError, match="layout_template"):
        load.execute(file="pickdraw/layout.safetensors")


def test_saves_never_hide_or_overwrite_and_clear_stale_temporaries(comfy_nodes, folders):
    """An empty prefix means the default; a prefix naming a hidden file is made visible; two saves with one prefix
    (a palette, then a template) give two files; a temporary file left by a killed save is removed, a fresh one
    (a save in progress) is not."""
    import os
    import time

    ops = importlib.import_module(f"{PACK_NAME}.nodes.ops")
    file_nodes = importlib.import_module(f"{PACK_NAME}.nodes.file_nodes")
    palette = _palette(ops)
    folder = folders / "output" / "pickdraw"
    folder.mkdir()
    stale, fresh = folder / "palette_00009_.safetensors.tmp-1-2", folder / "palette_00010_.safetensors.tmp-1-3"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    first = file_nodes.SavePalette.execute(palette=palette, filename_prefix="").ui["text"][0]
    assert first.replace(os.sep, "/").startswith("pickdraw/palette_") and not os.path.basename(first).startswith(".")
    assert not stale.exists() and fresh.exists()
    second = file_nodes.SavePalette.execute(palette=palette, filename_prefix="  ").ui["text"][0]
    hidden = file_nodes.SavePalette.execute(palette=palette, filename_prefix="pickdraw/.").ui["text"][0]
    assert len({first, second, hidden}) == 3 and not os.path.basename(hidden).startswith(".")
    names = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(names) == 3 and not any(n.startswith(".") for n in names)


def test_a_palette_file_of_nan_is_refused_when_loaded(comfy_nodes, folders):
    ops = importlib.import_module(f"{PACK_NAME}.nodes.ops")
    file_nodes = importlib.import_module(f"{PACK_NAME}.nodes.file_nodes")
    palette = _palette(ops)
    palette.set(1, "output.3.0", torch.full((5, 8), float("nan")))
    palette.save(str(folders / "input" / "pickdraw" / "nan.safetensors"))
    with pytest.raises(ValueError, match="not finite"):
        file_nodes.LoadPalette.execute(file="pickdraw/nan.safetensors")
