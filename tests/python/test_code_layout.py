"""Rules of the code's layout that a reader relies on: only the host adapter and the node files import ComfyUI."""

from __future__ import annotations

import ast
from pathlib import Path

NODES = Path(__file__).resolve().parents[2] / "nodes"

# ComfyUI's top-level modules and packages (its repository root is on sys.path when it runs).
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "nodes", "folder_paths", "latent_preview",
                   "execution", "server", "node_helpers"}


def _allowed(path: Path) -> bool:
    """The host adapter package, and the node files: *_nodes.py with their socket types and extension entry."""
    relative = path.relative_to(NODES)
    return relative.parts[0] == "comfy_host" or (len(relative.parts) == 1 and (
        relative.name.endswith("_nodes.py") or relative.name in ("types.py", "extension.py")))


def _comfyui_imports(path: Path, root: Path = NODES) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno} imports {name}" for name in names
                  if name.split(".")[0] in COMFYUI_MODULES]
    return found


def test_only_the_host_adapter_and_the_node_files_import_comfyui():
    files = sorted(NODES.rglob("*.py"))
    assert any(_allowed(f) for f in files) and any(not _allowed(f) for f in files)
    offending = [line for f in files if not _allowed(f) for line in _comfyui_imports(f)]
    assert offending == [], "ComfyUI imported outside nodes/comfy_host/ and the node files:\n" + "\n".join(offending)


def test_the_rule_sees_deferred_imports_and_ignores_relative_ones(tmp_path):
    """The check reads every import, the deferred ones inside functions included; the pack's own relative imports
    (from . import nodes) are not ComfyUI's."""
    module = tmp_path / "example.py"
    module.write_text("import torch\nfrom . import nodes\n\ndef f():\n    import comfy.sd\n"
                      "    from folder_paths import get_input_directory\n")
    assert _comfyui_imports(module, tmp_path) == ["example.py:5 imports comfy.sd", "example.py:6 imports folder_paths"]
