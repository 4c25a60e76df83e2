"""pyproject.toml as the ComfyUI Registry and ComfyUI-Manager read it: the fields they need, and a ComfyUI floor that
every checkout the tests run against satisfies (a floor above a tested version would hide the pack from its users)."""

from __future__ import annotations

import re

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from comfy_env import comfyui_path
from conftest import ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_registry_fields_are_present(pyproject):
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]), project["name"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the Registry wants X.Y.Z"
    assert project["description"] and comfy["PublisherId"] and comfy["DisplayName"]
    assert any(c.startswith("Operating System ::") for c in project["classifiers"])


def test_what_the_registry_archive_includes_exists(pyproject):
    for entry in pyproject["tool"]["comfy"]["includes"]:
        assert (ROOT / entry).exists(), f"tool.comfy.includes names {entry}, which the pack does not have"


def test_the_comfyui_floor_admits_the_checkout_under_test(pyproject):
    floor = SpecifierSet(pyproject["tool"]["comfy"]["requires-comfyui"])
    path = comfyui_path()
    if path is None or not (path / "comfyui_version.py").is_file():
        pytest.skip("no ComfyUI checkout with comfyui_version.py (set COMFYUI_PATH)")
    match = re.search(r'__version__\s*=\s*"([^"]+)"', (path / "comfyui_version.py").read_text())
    assert match, "comfyui_version.py has no __version__"
    assert Version(match.group(1)) in floor, (
        f"ComfyUI {match.group(1)} passes these tests but requires-comfyui is {floor}: lower the floor")
