"""Every shipped workflow against the registered nodes of real ComfyUI, and run end to end on tiny models.

Validation: node types registered, links consistent in types and slots, widget values matching each node's
widget inputs (with the extra control value after seeds). Runs: the UI graph is converted to API form and
executed node by node; loaders are replaced by tiny models (SD1.x UNet and CLIP from ComfyUI's classes,
random weights; a pooling stand-in for the VAE), steps and image size are reduced, and the LoRA loader
passes the model through (no LoRA file exists here). The SDXL graph runs on an SDXL-shaped UNet with SDXL's
two real tokenizers and two tiny text encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfy_env import PoolingVae, require_comfyui, tiny_clip, tiny_sd1_patcher, tiny_sdxl_clip, tiny_sdxl_patcher
from conftest import ROOT
from workflow_graph import FRONTEND_ONLY, declared_inputs, node_registry, to_api, widget_values

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
OUR_NODE_PREFIX = "PickAndDraw_"


@pytest.fixture(scope="module")
def registry():
    require_comfyui()
    return node_registry(ROOT)


def test_workflows_are_shipped():
    assert {p.stem for p in WORKFLOWS} >= {"pick_and_draw_sd15_class_noun", "pick_and_draw_sd15_lora_subject",
                                           "pick_and_draw_sampler_custom_advanced", "pick_and_draw_sdxl"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_tells_a_person_what_each_part_does(path):
    """Every prompt node says which prompt it is (the reference, the template's and the guided one look alike), and a
    note explains each stage: the reference, palette and template, the guided sampler."""
    graph = json.loads(path.read_text())
    prompts = [n.get("title", "") for n in graph["nodes"] if n["type"] == "PickAndDraw_SubjectPrompt"]
    assert sorted(t.split(" ")[0] for t in prompts) == ["Guided", "Reference", "Template"], prompts
    notes = [n["widgets_values"][0] for n in graph["nodes"] if n["type"] == "Note"]
    assert len(notes) == 3 and all(len(text) > 100 for text in notes)
    for words in ("Reference", "Pick Palette", "Draw Layout Template", "strength"):
        assert any(words in text for text in notes), words


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_matches_the_registered_nodes(registry, path):
    graph = json.loads(path.read_text())
    nodes = {n["id"]: n for n in graph["nodes"] if n["type"] not in FRONTEND_ONLY}
    for node in nodes.values():
        assert node["type"] in registry, f"{path.name}: unknown node type {node['type']}"
        cls = registry[node["type"]]
        widget_values(cls, node)
        declared = {name: kind for name, kind, _ in declared_inputs(cls)}
        for slot in node.get("inputs", []):
            assert slot["name"] in declared, f"{node['type']} has no input '{slot['name']}'"
        outputs = list(getattr(cls, "RETURN_TYPES", ()))
        saved = [o["type"] for o in node.get("outputs", [])]
        if not node["type"].startswith(OUR_NODE_PREFIX):
            # ComfyUI's own nodes may gain outputs at the end (SaveImage and PreviewImage pass their images on
            # in newer ComfyUI): the page appends them to a node of a file saved before, so the file must
            # give the first ones. Ours must match exactly.
            outputs = outputs[:len(saved)]
        assert saved == outputs, f"{node['type']}: outputs {node.get('outputs')} vs {outputs}"
    for link_id, src, src_slot, dst, dst_slot, kind in graph["links"]:
        src_cls, dst_node = registry[nodes[src]["type"]], nodes[dst]
        assert src_cls.RETURN_TYPES[src_slot] == kind, f"link {link_id}: {src_cls.RETURN_TYPES[src_slot]} vs {kind}"
        target = dst_node["inputs"][dst_slot]
        assert target["link"] == link_id and dict((n, k) for n, k, _ in declared_inputs(registry[dst_node["type"]]))[target["name"]] == kind


def _run(api, registry, substitutes):
    from comfy_api.latest import io

    done, saved = {}, []
    pending = dict(api)
    while pending:
        ready = [i for i, n in pending.items() if all(v[0] in done for v in n["inputs"].values() if isinstance(v, tuple))]
        assert ready, "the graph has a cycle or a dangling link"
        for node_id in ready:
            node = pending.pop(node_id)
            kwargs = {k: done[v[0]][v[1]] if isinstance(v, tuple) else v for k, v in node["inputs"].items()}
            kind = node["class_type"]
            if kind in substitutes:
                done[node_id] = substitutes[kind](**kwargs)
                if kind in ("SaveImage", "PreviewImage"):
                    saved.append(kwargs["images"])
                continue
            cls = registry[kind]
            if isinstance(cls, type) and issubclass(cls, io.ComfyNode):
                done[node_id] = tuple(cls.execute(**kwargs).result or ())
            else:
                result = getattr(cls(), cls.FUNCTION)(**kwargs)
                done[node_id] = tuple(result["result"]) if isinstance(result, dict) else tuple(result)
    return done, saved


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_guides_at_the_nodes_default_strength(registry, path):
    """A shipped graph opens at the strength a new node gets (the default chosen on the toy world), not an older one."""
    graph = json.loads(path.read_text())
    guided = [n for n in graph["nodes"] if n["type"] in ("PickAndDraw_GuidedKSampler", "PickAndDraw_Guider")]
    assert guided, "every workflow guides a sample"
    for node in guided:
        cls = registry[node["type"]]
        default = next(options["default"] for name, _, options in declared_inputs(cls) if name == "strength")
        assert widget_values(cls, node)["strength"] == default, f"node {node['id']} ({node['type']})"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_end_to_end_on_tiny_models(registry, path):
    graph = json.loads(path.read_text())
    api = to_api(graph, registry)
    for node in api.values():  # small and quick: 128 px, 3 steps everywhere
        for key, value in (("steps", 3), ("width", 128), ("height", 128)):
            if key in node["inputs"]:
                node["inputs"][key] = value
    sdxl = "sdxl" in path.stem
    model = tiny_sdxl_patcher(for_tiny_clip=True) if sdxl else tiny_sd1_patcher()
    clip, vae = (tiny_sdxl_clip() if sdxl else tiny_clip()), PoolingVae()
    vae.decode = lambda samples: torch.nn.functional.interpolate(samples[:, :3], scale_factor=8).movedim(1, -1).sigmoid()
    substitutes = {
        "CheckpointLoaderSimple": lambda **_: (model, clip, vae),
        "LoraLoader": lambda model, clip, **_: (model, clip),
        "LoadImage": lambda **_: (torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 128, 128)),
        "SaveImage": lambda images, **_: (),
        "PreviewImage": lambda images, **_: (),
    }
    done, saved = _run(api, registry, substitutes)
    assert len(saved) == 3  # the result and two previews
    result = saved[0] if saved[0].shape[1:3] == (128, 128) else saved[-1]
    assert all(torch.isfinite(image).all() for image in saved)
    assert result.shape[0] == 1


@pytest.mark.parametrize("breakage", ["unknown type", "widget missing", "widget extra", "wrong link type"])
def test_a_broken_workflow_is_caught(registry, tmp_path, breakage):
    graph = json.loads((ROOT / "workflows" / "pick_and_draw_sd15_class_noun.json").read_text())
    guided = next(n for n in graph["nodes"] if n["type"] == "PickAndDraw_GuidedKSampler")
    if breakage == "unknown type":
        guided["type"] = "PickAndDraw_NoSuchNode"
    elif breakage == "widget missing":
        guided["widgets_values"].pop()
    elif breakage == "widget extra":
        guided["widgets_values"].append(3.0)
    else:
        graph["links"][0][5] = "LATENT"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(graph))
    with pytest.raises((AssertionError, KeyError)):
        test_workflow_matches_the_registered_nodes(registry, broken)
