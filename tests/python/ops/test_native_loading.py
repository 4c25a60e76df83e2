"""The import-time check: a module built for another torch is refused with the exact fix."""

from __future__ import annotations

import importlib
import json

import torch

from conftest import PACK_NAME, import_pack


def _native():
    import_pack()
    return importlib.import_module(f"{PACK_NAME}.nodes.ops._native")


def test_current_build_is_accepted():
    native = _native()
    assert native.unavailable_reasons() == []
    info = native.load().build_info()
    assert info["torch_version"] == torch.__version__


def test_mismatched_torch_is_refused_with_the_fix(tmp_path, monkeypatch):
    native = _native()
    record = json.loads(native._BUILD_RECORD.read_text())
    record["torch_version"] = "1.0.0"
    fake = tmp_path / "_C.build.json"
    fake.write_text(json.dumps(record))
    monkeypatch.setattr(native, "_BUILD_RECORD", fake)
    reasons = native.unavailable_reasons()
    assert len(reasons) == 1
    assert "built for torch 1.0.0" in reasons[0] and torch.__version__ in reasons[0]
    assert "install.py" in reasons[0]


def test_missing_build_is_reported(tmp_path, monkeypatch):
    native = _native()
    monkeypatch.setattr(native, "_BUILD_RECORD", tmp_path / "absent.json")
    monkeypatch.setattr(native, "_module", None)
    try:
        native.load()
    except ImportError as exc:
        assert "not built" in str(exc) and "install.py" in str(exc)
    else:
        raise AssertionError("load() succeeded without a build record")
