"""The README's main command, headless on the built-in tiny model (skipped without ComfyUI)."""

from __future__ import annotations

import os
import subprocess
import sys

from comfy_env import comfyui_path, require_comfyui
from conftest import ROOT


def test_example_pipeline_writes_the_grid_previews_and_stores(tmp_path):
    require_comfyui()
    env = dict(os.environ, COMFYUI_PATH=str(comfyui_path()))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "example_pipeline.py"), "--out", str(tmp_path), "--steps", "3"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "only prove the pipeline runs" in done.stdout
    for name in ("grid.png", "mask_over_reference.png", "token_map.png", "template_subject_map.png",
                 "palette.safetensors", "layout_template.safetensors"):
        assert (tmp_path / name).stat().st_size > 0, name
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (3 * 128, 128)
