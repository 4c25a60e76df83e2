"""A workflow file read as ComfyUI's server reads it: the registered node classes, each node's widget values by
name, and the API form (`{id: {"class_type", "inputs"}}`) that /prompt takes.

Used by the workflow tests (which run the API form node by node) and by the device check that queues a shipped
workflow on ComfyUI's own server.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # the page's own nodes: text on the canvas, never sent to the server


def node_registry(pack_root: Path) -> dict:
    """ComfyUI's NODE_CLASS_MAPPINGS with its built-in nodes and the pack at `pack_root` loaded, as its server
    loads them (ComfyUI must be importable)."""
    comfy_nodes = importlib.import_module("nodes")
    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False))
    if not asyncio.run(comfy_nodes.load_custom_node(str(pack_root))):
        raise RuntimeError(f"ComfyUI's loader refused the pack at {pack_root}: see the log above")
    return comfy_nodes.NODE_CLASS_MAPPINGS


def declared_inputs(cls) -> list[tuple[str, str, dict]]:
    """[(name, type, options)] of a node class, required then optional, as its INPUT_TYPES declares them."""
    declared = cls.INPUT_TYPES()
    out = []
    for group in ("required", "optional"):
        for name, spec in declared.get(group, {}).items():
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            out.append((name, kind, spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}))
    return out


def widget_values(cls, node) -> dict:
    """{input name: value} of a saved node's widgets; fails when the saved values and the declared widgets differ
    in number (the frontend's seed control and upload button keep a value of their own)."""
    values = list(node["widgets_values"])
    linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
    result = {}
    for name, kind, options in declared_inputs(cls):
        if kind not in WIDGET_TYPES or name in linked:
            continue
        assert values, f"node {node['id']} ({node['type']}): no widget value for '{name}'"
        result[name] = values.pop(0)
        if options.get("control_after_generate"):  # the frontend's seed control widget
            control = values.pop(0)
            assert control in ("fixed", "increment", "decrement", "randomize"), control
        if options.get("image_upload"):  # the frontend's upload button keeps a value too
            assert values.pop(0) == "image"
    assert not values, f"node {node['id']} ({node['type']}): {len(values)} widget values too many: {values}"
    return result


def to_api(graph: dict, registry: dict) -> dict:
    """{node id: {"class_type", "inputs"}}; a linked input is the tuple (source node id, source slot)."""
    api = {}
    links = {row[0]: row for row in graph["links"]}
    for node in graph["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        inputs = widget_values(registry[node["type"]], node)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = (src, src_slot)
        api[node["id"]] = {"class_type": node["type"], "inputs": inputs}
    return api


def to_prompt(api: dict) -> dict:
    """The API form as JSON for /prompt: string node ids, links as [id, slot] lists."""
    return {str(node_id): {"class_type": node["class_type"],
                           "inputs": {name: [str(value[0]), value[1]] if isinstance(value, tuple) else value
                                      for name, value in node["inputs"].items()}}
            for node_id, node in api.items()}
