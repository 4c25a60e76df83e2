"""Palette and template objects, their files, and interoperability with the safetensors package."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def _metadata(ops, sigmas=(14.6, 4.0, 1.0, 0.2), layers=("output.3.0", "output.6.0")):
    m = ops.GuidanceMetadata()
    m.model_family = "sd1"
    m.layer_keys = list(layers)
    m.tokens = ops.SubjectTokens("sks dog", "a photo of sks dog", [4, 5])
    m.image_height, m.image_width = 512, 512
    m.sigmas = list(sigmas)
    m.feature_source = "attn2_query"
    m.tau = 0.5
    m.extra = {"seed": "3", "sampler": "euler"}
    return m


def _palette(ops):
    p = ops.Palette(_metadata(ops))
    for i in range(4):
        p.set(i, "output.3.0", torch.randn(10 + i, 16, dtype=torch.float16))
        p.set(i, "output.6.0", torch.randn(7, 8))
    return p


def test_palette_round_trip_and_python_safetensors_reads_it(ops, tmp_path):
    palette = _palette(ops)
    path = tmp_path / "dog.safetensors"
    palette.save(str(path))
    loaded = ops.Palette.load(str(path))
    assert loaded.metadata.tokens.indices == [4, 5]
    assert loaded.metadata.extra == {"seed": "3", "sampler": "euler"}
    for key, tensor in palette.entries().items():
        assert torch.equal(loaded.get(*key), tensor)
    # The file is an ordinary safetensors file: the reference reader agrees on every tensor.
    plain = load_file(str(path))
    assert set(plain) == {f"s{i}/{k}" for i, k in palette.entries()}
    assert torch.equal(plain["s2/output.3.0"], palette.get(2, "output.3.0"))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pickdraw.palette"
    header = json.loads(meta["pickdraw"])
    assert header["format_version"] == ops.build_info()["guidance_format_version"]
    assert header["sigmas"] == [14.6, 4.0, 1.0, 0.2]


def test_file_written_by_python_safetensors_loads(ops, tmp_path):
    palette = _palette(ops)
    tensors = {f"s{i}/{k}": t for (i, k), t in palette.entries().items()}
    path = tmp_path / "py.safetensors"
    save_file(tensors, str(path), metadata={"format": "pickdraw.palette", "pickdraw": palette.metadata.to_json("palette")})
    loaded = ops.Palette.load(str(path))
    assert torch.equal(loaded.get(3, "output.6.0"), palette.get(3, "output.6.0"))


def test_template_round_trip_and_lookup(ops, tmp_path):
    t = ops.LayoutTemplate(_metadata(ops))
    for i in range(4):
        t.set(i, "output.3.0", torch.full((2, 16, 16), float(i)))
        t.set(i, "output.6.0", torch.rand(2, 32, 32))
    data = t.to_bytes()
    back = ops.LayoutTemplate.from_bytes(data)
    assert back.lookup(3.5, "output.3.0")[0, 0, 0].item() == 1.0  # 3.5 is nearest 4.0 (index 1)
    assert back.match_sigma(0.25).index == 3
    with pytest.raises(ValueError, match="outside the recorded range"):
        back.lookup(20.0, "output.3.0")
    with pytest.raises(ValueError, match="layout_template"):
        ops.Palette.from_bytes(data)


@pytest.mark.parametrize("cut", [0, 7, 8, 50, -1])
def test_truncated_or_corrupt_files_raise_value_error(ops, cut):
    data = _palette(ops).to_bytes()
    with pytest.raises(ValueError):
        ops.Palette.from_bytes(data[: cut if cut >= 0 else len(data) - 1])
    with pytest.raises(ValueError, match="malformed"):
        ops.Palette.from_bytes(b"\xff" * 8 + data[8:])


def test_foreign_safetensors_file_is_named(ops, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="not a Pick-and-Draw file"):
        ops.Palette.load(str(path))
    with pytest.raises(ValueError, match="cannot open"):
        ops.Palette.load(str(tmp_path / "missing.safetensors"))


def test_store_validation_errors(ops):
    p = ops.Palette(_metadata(ops))
    with pytest.raises(IndexError):
        p.set(9, "output.3.0", torch.randn(2, 16))
    with pytest.raises(ValueError, match="not among the declared layer keys"):
        p.set(0, "middle.0.0", torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"\[M, C\]"):
        p.set(0, "output.3.0", torch.randn(0, 16))
    with pytest.raises(ValueError, match="incomplete"):
        p.save("/nonexistent/never-written.safetensors")


def test_nearest_sigma_matches_reference(ops, reference):
    recorded = [14.6, 9.7, 6.6, 4.4, 2.9, 1.8, 1.0, 0.5, 0.03]
    for s in torch.logspace(-1.5, 1.15, 60).tolist():
        assert ops.nearest_sigma(recorded, s).index == reference.nearest_sigma(recorded, s)
    with pytest.raises(ValueError, match="outside the recorded range"):
        ops.nearest_sigma(recorded, 0.01)
