"""Every shipped workflow in ComfyUI's real web UI, driven by headless Chromium as a user would.

One ComfyUI server (this pack and a test-only package of tiny-model loaders in its custom_nodes) and one page
serve the whole module. Each workflow file is loaded through the app's load path, as opening the file does,
and checked as the page shows it: no dialog (such as the missing-node one), every node registered and not
marked as failed, every combo value one of its options, and our nodes with the sockets and widget values the
file gives. Then the same graph with only the checkpoint loader swapped for a tiny one (random weights, see
browser_stub_nodes.py) and 3 steps at 128 px is queued from the page and must run to the end, with the
output and previews shown on their nodes. The LoRA workflow loads a real (tiny) LoRA file.

With PICKDRAW_WRITE_THUMBNAILS=1 the workflows' thumbnails are written: workflows/<name>.jpg, the name and format
ComfyUI's template browser asks a custom node pack for. A workflow that runs as shipped (the toy world's, whose models
come with the pack) gets its own pictures from a run with the file's settings: reference | result over the two
previews; the others, whose checkpoints are the user's, get a screenshot of the loaded graph.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
import time

import pytest

import comfyui_browser as ui
from conftest import ROOT

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
OUR_NODE_PREFIX = "PickAndDraw_"
# The folder name the README's install gives the pack; the template browser groups its workflows under it.
PACK_FOLDER = "comfyui-pick-and-draw"
STUB_FOLDER = "pickdraw_browser_test_stubs"
REFERENCE_SIZE = 128
RUN_SETTINGS = {"steps": 3, "width": REFERENCE_SIZE, "height": REFERENCE_SIZE}
OUTPUT_NODE_TYPES = ("SaveImage", "PreviewImage")
THUMBNAIL_SIZE = 512  # square, as the template browser's cards (and ComfyUI's own templates) are
WRITE_THUMBNAILS = os.environ.get("PICKDRAW_WRITE_THUMBNAILS") == "1"
RUN_TIMEOUT_S = 240

_skip = ui.skip_reason()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def _widget_values_of(node_type: str) -> set:
    """The first widget value (the file name) of every node of this type in the shipped workflows."""
    return {n["widgets_values"][0] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"] if n["type"] == node_type}


def _write_reference_image(path: Path) -> None:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:REFERENCE_SIZE, 0:REFERENCE_SIZE] / REFERENCE_SIZE
    subject = ((x - 0.5) ** 2 + (y - 0.55) ** 2 < 0.09)[..., None]  # a disc on a gradient background
    pixels = np.where(subject, [200, 120, 60], np.stack([x * 80, y * 120, 160 + 0 * x], -1))
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """A running ComfyUI with our pack, the tiny loaders, the reference image, placeholder files for the
    checkpoints the workflows name and a tiny LoRA under the name the LoRA workflow uses; and a page on it."""
    from comfy_env import require_comfyui

    require_comfyui()  # ComfyUI importable here too: the LoRA file is made with its key maps
    import browser_stub_nodes

    base = tmp_path_factory.mktemp("comfyui")
    ui.prepare_base_directory(base, {PACK_FOLDER: ROOT})
    here = Path(__file__).resolve().parent  # the stub module, and the shared harness it imports
    ui.write_module_package(base / "custom_nodes" / STUB_FOLDER, "browser_stub_nodes", [here, here.parent])
    for name in _widget_values_of("LoadImage"):
        _write_reference_image(base / "input" / name)
    for name in _widget_values_of("CheckpointLoaderSimple"):  # listed in the combo; the tiny loaders never read them
        (base / "models" / "checkpoints" / name).write_bytes(b"")
    for name in _widget_values_of("LoraLoader"):
        browser_stub_nodes.write_tiny_sd1_lora(base / "models" / "loras" / name)
    server = ui.ComfyServer(base, log_path=base / "server.log")
    server.start()
    try:
        with ui.comfyui_page(server.url, viewport=(1024, 1024)) as page:
            yield server, page
    finally:
        server.stop()


@pytest.fixture
def page(comfyui):
    _, page = comfyui
    ui.close_dialogs(page)
    page.uncaught_errors.clear()
    yield page
    assert not page.uncaught_errors, f"uncaught errors in the page: {page.uncaught_errors}"


def problems_in_loaded_graph(graph: dict, shown: dict) -> list[str]:
    """What a user would see wrong once the file is open, compared with what the file says; empty if none."""
    problems = [f"a dialog or error notice is open after loading: {' | '.join(text.split(chr(10))[:4])}"
                for text in shown["dialogs"]]
    page_nodes = {str(n["id"]): n for n in shown["nodes"]}  # numbers in frontend 1.27, strings in 1.49
    for node in graph["nodes"]:
        label = f"node {node['id']} ({node['type']})"
        page_node = page_nodes.get(str(node["id"]))
        if page_node is None:
            problems.append(f"{label} is not in the page's graph")
            continue
        if not page_node["registered"]:
            problems.append(f"{label}: its type is not registered in the page (a missing node)")
        elif page_node["has_errors"]:  # a missing node is marked too, but frontend 1.49 may clear that mark
            problems.append(f"{label} is marked as failed on the canvas")
        for widget in page_node["widgets"]:
            if widget["options"] is not None and widget["value"] not in widget["options"]:
                problems.append(f"{label}: widget '{widget['name']}' holds {widget['value']!r}, not one of its options")
        if node["type"].startswith(OUR_NODE_PREFIX):
            problems += _differences_from_file(label, node, page_node)
    return problems


def _differences_from_file(label: str, node: dict, page_node: dict) -> list[str]:
    expected = {
        "inputs": [{"name": i["name"], "type": i["type"], "link": i.get("link")}
                   for i in node.get("inputs", []) if not (i.get("widget") and i.get("link") is None)],
        "outputs": [{"name": o["name"], "type": o["type"], "links": o.get("links") or []} for o in node.get("outputs", [])],
        "widgets_values": node.get("widgets_values", []),
    }
    return [f"{label}: {key} in the page are {page_node[key]}, the file gives {value}"
            for key, value in expected.items() if page_node[key] != value]


def with_tiny_loaders(graph: dict, sdxl: bool) -> dict:
    """The graph with each CheckpointLoaderSimple swapped for the tiny loader of the model family (same input,
    outputs and links), and nothing else changed."""
    from browser_stub_nodes import SD1_LOADER, SDXL_LOADER

    swapped = copy.deepcopy(graph)
    for node in swapped["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["type"] = SDXL_LOADER if sdxl else SD1_LOADER
            node.setdefault("properties", {})["Node name for S&R"] = node["type"]
    return swapped


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_opens_as_the_file_says(page, path):
    graph = json.loads(path.read_text())
    problems = problems_in_loaded_graph(graph, ui.load_graph(page, graph))
    assert not problems, "\n".join(problems)
    if WRITE_THUMBNAILS and not runs_as_shipped(graph):  # the others' thumbnails come from their run
        ui.screenshot_graph(page, path.with_suffix(".jpg"), THUMBNAIL_SIZE)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_from_the_page(comfyui, page, path):
    server, _ = comfyui
    graph = with_tiny_loaders(json.loads(path.read_text()), sdxl="sdxl" in path.stem)
    problems = problems_in_loaded_graph(graph, ui.load_graph(page, graph))
    assert not problems, "\n".join(problems)
    edited = ui.set_widget_values(page, RUN_SETTINGS)
    assert edited >= 3, f"only {edited} steps/width/height widgets found"

    result = ui.queue_and_wait(page, RUN_TIMEOUT_S)
    kinds = [e["type"] for e in result["events"]]
    errors = [e["detail"] for e in result["events"] if e["type"] == "execution_error"]
    assert not result["dialogs"] and not result["node_errors"], (result["dialogs"], result["node_errors"])
    assert not errors, f"execution_error: {errors}\n{server.log_tail()}"
    assert result["finished"] and "execution_success" in kinds, f"no execution_success within {RUN_TIMEOUT_S} s: {kinds}"
    assert not _cached_nodes(result["events"]), "the run reused cached results"

    # Every node that reported progress got to 100%, and every long node reported some.
    last_progress = {}
    for event in result["events"]:
        if event["type"] == "progress":
            last_progress[str(event["detail"]["node"])] = (event["detail"]["value"], event["detail"]["max"])
    assert all(value == maximum for value, maximum in last_progress.values()), last_progress
    long_nodes = {str(n["id"]) for n in graph["nodes"] if n["type"] in
                  ("PickAndDraw_PickPalette", "PickAndDraw_DrawLayoutTemplate", "PickAndDraw_GuidedKSampler",
                   "SamplerCustomAdvanced")}
    assert long_nodes <= set(last_progress), f"no progress from {long_nodes - set(last_progress)}"
    samplers = [str(n["id"]) for n in graph["nodes"] if n["type"] in ("PickAndDraw_GuidedKSampler", "SamplerCustomAdvanced")]
    steps = RUN_SETTINGS["steps"]
    assert [last_progress[s] for s in samplers] == [(steps, steps)], "the steps edited in the page were not run"

    # The result and the two previews are shown on their nodes, and the result was saved.
    output_ids = [n["id"] for n in graph["nodes"] if n["type"] in OUTPUT_NODE_TYPES]
    executed = {str(e["detail"]["node"]) for e in result["events"] if e["type"] == "executed"}
    assert {str(i) for i in output_ids} <= executed, f"executed: {executed}"
    ui.fit_view(page)  # the canvas loads node images as it draws them
    shown = ui.shown_images(page, output_ids)
    save_id = next(n["id"] for n in graph["nodes"] if n["type"] == "SaveImage")
    assert shown[str(save_id)] == [[REFERENCE_SIZE, REFERENCE_SIZE]], shown
    assert list((server.base / "output").glob("pick_and_draw*.png")), "Save Image wrote no file"
    if any(n["type"] == "LoraLoader" for n in graph["nodes"]):
        assert "lora key not loaded" not in server.log() and "NOT LOADED" not in server.log(), server.log_tail()
    if WRITE_THUMBNAILS and runs_as_shipped(graph):
        write_output_thumbnail(page, server, graph, path.with_suffix(".jpg"))


def runs_as_shipped(graph: dict) -> bool:
    """The graph's models come with the pack (the toy world's checkpoint node), so the test runs it unchanged. Read
    from the node itself: the other workflows' checkpoint loaders are swapped for the tests' tiny ones before a run."""
    return any(n["type"] == "PickAndDraw_ToyWorldCheckpoint" for n in graph["nodes"])


def write_output_thumbnail(page, server, graph: dict, path: Path) -> None:
    """Runs the graph as the file gives it (its own steps and size) and writes the thumbnail from its pictures:
    the reference and the saved result on top, the two previews (the subject found in the reference, the template's
    subject map) below, each a quarter of the square."""
    import numpy as np
    from PIL import Image

    ui.load_graph(page, graph)
    result = ui.queue_and_wait(page, RUN_TIMEOUT_S)
    assert result["finished"] and "execution_success" in [e["type"] for e in result["events"]], result["events"][-3:]
    shown = {}
    for event in result["events"]:
        images = (event["detail"] or {}).get("output", {}).get("images") if event["type"] == "executed" else None
        if images:
            image = images[0]
            shown[str(event["detail"]["node"])] = server.base / image["type"] / image.get("subfolder", "") / image["filename"]
    by_type = {}
    for node in graph["nodes"]:
        if str(node["id"]) in shown:
            by_type.setdefault(node["type"], []).append(shown[str(node["id"])])
    references = [n for n in graph["nodes"] if n["type"] == "PickAndDraw_ToyWorldReference"]
    reference = ROOT / "nodes" / "toy_world" / "references" / f"{references[0]['widgets_values'][0]}.png"
    pictures = [reference, by_type["SaveImage"][0], *by_type["PreviewImage"][:2]]  # previews in the file's order
    assert len(pictures) == 4, pictures
    half = THUMBNAIL_SIZE // 2
    tiles = [np.asarray(Image.open(p).convert("RGB").resize((half, half), Image.NEAREST)) for p in pictures]
    grid = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    Image.fromarray(grid).save(path, "JPEG", quality=90, optimize=True)


def _cached_nodes(events: list) -> list:
    return [node for e in events if e["type"] == "execution_cached" for node in e["detail"]["nodes"]]


@pytest.mark.parametrize("breakage", ["unknown node type", "one widget value too many", "one widget value missing"])
def test_a_broken_workflow_is_reported(page, breakage):
    """The same check as for the shipped files reports exactly what a broken file shows in the page."""
    graph = json.loads((ROOT / "workflows" / "pick_and_draw_sd15_class_noun.json").read_text())
    guided = next(n for n in graph["nodes"] if n["type"] == "PickAndDraw_GuidedKSampler")
    if breakage == "unknown node type":
        guided["type"] = "PickAndDraw_NoSuchNode"
        # the dialog "Some Nodes Are Missing" in frontend 1.27, the notice "Missing node: <type>" in 1.49
        expected = ["a dialog or error notice is open after loading: ",
                    "node 10 (PickAndDraw_NoSuchNode): its type is not registered in the page"]
    else:  # the page fills widgets in order: one value too many is dropped, a missing one takes its default
        if breakage == "one widget value too many":
            guided["widgets_values"].append(2.0)
        else:
            guided["widgets_values"].pop()
        expected = ["node 10 (PickAndDraw_GuidedKSampler): widgets_values in the page are"]
    problems = problems_in_loaded_graph(graph, ui.load_graph(page, graph))
    assert len(problems) == len(expected) and all(p.startswith(e) for p, e in zip(problems, expected)), problems
    if breakage == "unknown node type":
        assert "missing" in problems[0].lower(), problems


def test_the_template_browser_shows_each_workflow_with_its_thumbnail(page):
    missing = [p.with_suffix(".jpg").name for p in WORKFLOWS if not p.with_suffix(".jpg").is_file()]
    assert not missing, f"no thumbnail {missing}: run this test file with PICKDRAW_WRITE_THUMBNAILS=1"
    fetched = {}
    record = lambda response: fetched.setdefault(response.url.split("/api/")[-1], (response.status, response.headers.get("content-type")))
    page.on("response", record)
    names = [p.stem for p in WORKFLOWS]
    try:
        page.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        # "Search templates..." in frontend 1.27, "Search ..." in 1.49
        search = page.locator(f'{ui.DIALOGS} input[placeholder^="Search"]').first
        search.fill("pick_and_draw")
        # Each card: its title (the workflow's name) and the size of its loaded picture. A card whose picture
        # has not loaded yet is scrolled into view, as a user scrolling the dialog would, in case the browser
        # defers pictures outside the view.
        cards = """(names) => {
          const found = {};
          for (const img of document.querySelectorAll('[role="dialog"] img')) {
            let card = img.parentElement;
            while (card && !names.some(n => card.innerText.includes(n))) card = card.parentElement;
            const name = card && names.find(n => card.innerText.split('\\n').includes(n));
            if (!name) continue;
            if (img.complete && img.naturalWidth > 0) found[name] = [img.naturalWidth, img.naturalHeight];
            else img.scrollIntoView({block: 'nearest'});
          }
          // A grid that renders only the cards in view has no picture yet for the others: scroll it on, half a
          // view at a time, back to the top after the bottom.
          if (Object.keys(found).length < names.length) {
            for (const el of document.querySelectorAll('[role="dialog"] *')) {
              if (el.scrollHeight > el.clientHeight + 4 && getComputedStyle(el).overflowY !== 'visible') {
                const bottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
                el.scrollTop = bottom ? 0 : el.scrollTop + el.clientHeight / 2;
              }
            }
          }
          return found;
        }"""
        deadline = time.monotonic() + 90
        shown = {}
        while len(shown) < len(names) and time.monotonic() < deadline:
            if search.input_value() != "pick_and_draw":  # the dialog re-rendered its search box while loading
                search.fill("pick_and_draw")
            page.wait_for_timeout(250)
            shown.update(page.evaluate(cards, names))  # a virtualised grid drops the cards it scrolled past
        if len(shown) < len(names):
            texts = page.locator(ui.DIALOGS).all_inner_texts()
            raise AssertionError(f"after 90 s the template browser shows pictures for {sorted(shown)} of {names}; "
                                 f"search box holds {search.input_value()!r}; responses {fetched}; dialog text "
                                 f"{[t[:600] for t in texts]}")
    finally:
        page.remove_listener("response", record)
        ui.close_dialogs(page)
    assert shown == {name: [THUMBNAIL_SIZE, THUMBNAIL_SIZE] for name in names}, shown
    for name in names:  # the picture is the workflow's .jpg beside its .json, served for the pack's folder
        assert fetched.get(f"workflow_templates/{PACK_FOLDER}/{name}.jpg") == (200, "image/jpeg"), fetched
