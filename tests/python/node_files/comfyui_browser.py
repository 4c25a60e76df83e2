"""A real ComfyUI server and its web UI in headless Chromium, for tests that drive the pack as a user does.

The server runs from the ComfyUI checkout (COMFYUI_PATH) with everything it writes under a temporary base
directory: custom nodes, models, input, output, user settings and its database. ComfyUI's own files are only
read. The browser is the system's Chromium (Debian's `chromium` package) driven by Playwright's Python
package; Playwright never downloads a browser here. The page may only reach the local server: every other
request is aborted before it leaves the browser.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from comfy_env import comfyui_path


def returning_user_settings() -> dict:
    """Settings of a user who has opened this frontend before, with a bare canvas.

    Without the first two the template browser opens over the graph. The next two are the values that the
    default navigation mode ("legacy") sets when it is registered: frontend 1.27 sets them before
    registering them, which throws in the page at every start unless they already hold those values. The
    rest keep screenshots to the graph: no minimap, canvas menu, statistics or workflow tabs over it, and
    nodes drawn in full at any zoom (by default they turn into blank boxes when zoomed out to fit a graph).
    """
    from importlib.metadata import version

    return {"Comfy.TutorialCompleted": True, "Comfy.InstalledVersion": version("comfyui-frontend-package"),
            "Comfy.Canvas.LeftMouseClickBehavior": "panning", "Comfy.Canvas.MouseWheelScroll": "zoom",
            "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasMenu": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.Workflow.WorkflowTabsPosition": "Sidebar", "LiteGraph.Canvas.MinFontSizeForLOD": 0}


def chromium_executable() -> str | None:
    """PICKDRAW_CHROMIUM, else a Chromium on PATH (Debian's package installs `chromium`)."""
    candidates = [os.environ.get("PICKDRAW_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None when everything they need is installed."""
    if comfyui_path() is None:
        return "ComfyUI checkout not found: set COMFYUI_PATH to one (or install the pack in ComfyUI/custom_nodes)"
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        return "ComfyUI's frontend package is not installed: pip install -r $COMFYUI_PATH/requirements.txt"
    if importlib.util.find_spec("requests") is None:  # ComfyUI's server imports it; its requirements.txt omits it
        return "ComfyUI's server needs the Python package 'requests': pip install requests"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright's Python package is not installed: pip install playwright (no browser download needed)"
    if chromium_executable() is None:
        return "no Chromium found: apt-get install chromium (or set PICKDRAW_CHROMIUM to a Chromium binary)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base_directory(base: Path, custom_nodes: dict[str, Path]) -> None:
    """The folders ComfyUI's --base-directory expects, custom node packages linked in by folder name, and
    the settings of a returning user."""
    for folder in ("custom_nodes", "input", "output", "temp", "models/checkpoints", "models/loras", "user/default"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for name, source in custom_nodes.items():
        (base / "custom_nodes" / name).symlink_to(source, target_is_directory=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(returning_user_settings()))


def write_module_package(folder: Path, module: str, import_folders: list[Path]) -> Path:
    """A custom node package whose __init__ re-exports a test module's node mappings (ComfyUI loads packages,
    not loose modules from elsewhere); `import_folders` (the module's own and those of its imports) go on sys.path."""
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(
        "import sys\n"
        f"sys.path[:0] = {[str(f) for f in import_folders]!r}\n"
        f"from {module} import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n")
    return folder


class ComfyServer:
    """`python main.py` of the checkout on a free local port, everything written under `base`; CPU only unless
    `device_arguments` says otherwise (for example () for ComfyUI's defaults on a GPU)."""

    def __init__(self, base: Path, log_path: Path, device_arguments: tuple[str, ...] = ("--cpu",)):
        self.base, self.log_path, self.device_arguments = base, log_path, tuple(device_arguments)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        comfyui = comfyui_path()
        command = [
            sys.executable, "main.py", *self.device_arguments, "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base),
            "--database-url", f"sqlite:///{self.base / 'comfyui.db'}",  # the default lives in the checkout
            "--disable-auto-launch", "--disable-api-nodes",  # no browser of its own, no cloud nodes
            "--cache-none",  # every queued graph runs all its nodes, whatever ran before
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            with contextlib.suppress(OSError):  # it answers once every node is loaded and the server is up
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5) as response:
                    if response.status == 200:
                        return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer on {self.url} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def comfyui_page(server_url: str, viewport=(1024, 1024)):
    """A Chromium page with ComfyUI's web UI loaded and ready (app, graph and Vue app up). Requests to
    anything but the server are aborted and listed in page.blocked_requests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable(),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-domain-reliability", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.blocked_requests = []

            def local_only(route):
                if route.request.url.startswith(server_url + "/") or route.request.url == server_url:
                    route.continue_()
                else:
                    page.blocked_requests.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            page.uncaught_errors = []
            page.on("pageerror", lambda error: page.uncaught_errors.append(f"{error}\n{error.stack}"))
            page.goto(server_url + "/")
            page.wait_for_function("window.app && window.app.graph && window.app.vueAppReady", timeout=120_000)
            yield page
        finally:
            browser.close()


# Dialogs: frontend 1.27 draws them with PrimeVue (.p-dialog), 1.49 with components of its own; both give
# them role="dialog".
DIALOGS = '[role="dialog"]'
# What the page puts over the canvas to tell the user that something is wrong: a dialog, or the error notice
# with which newer frontends (1.49) report what a loaded graph lacks (missing nodes, models or files) and why
# a run failed, where older ones open a dialog.
NOTICES = DIALOGS + ', [data-testid="error-overlay"]'
_NOTICES_JS = f"[...document.querySelectorAll({json.dumps(NOTICES)})].map(d => d.innerText)"

# What the page shows once a graph is loaded: the dialogs and notices over the canvas and, for every node,
# whether its type is registered, whether the canvas marks it as failed, its sockets and its widgets. A
# widget's input socket that nothing is linked to is the widget itself, not an input of the graph. Node ids
# are numbers in frontend 1.27 and strings in 1.49: the callers compare them as strings.
_LOAD_GRAPH_JS = """
async (graph) => {
  await app.loadGraphData(graph);
  await new Promise(resolve => requestAnimationFrame(() => setTimeout(resolve, 100)));
  const comboOptions = w => { const v = w.options?.values; return typeof v === 'function' ? v(w) : (v ?? null); };
  return {
    dialogs: NOTICES_JS,
    nodes: app.graph._nodes.map(n => ({
      id: n.id, type: n.type,
      registered: n.type in LiteGraph.registered_node_types,
      has_errors: !!n.has_errors,
      inputs: (n.inputs ?? []).filter(i => !(i.widget && i.link == null))
                              .map(i => ({name: i.name, type: i.type, link: i.link ?? null})),
      outputs: (n.outputs ?? []).map(o => ({name: o.name, type: o.type, links: o.links ?? []})),
      widgets: (n.widgets ?? []).map(w => ({name: w.name, type: w.type, value: w.value,
                                            options: w.type === 'combo' ? comboOptions(w) : null})),
      widgets_values: n.serialize().widgets_values ?? [],
    })),
  };
}
""".replace("NOTICES_JS", _NOTICES_JS)


def load_graph(page, graph: dict) -> dict:
    """Loads a UI-format graph through the app's own load path (what opening a file does) and returns the
    page's view of it (see _LOAD_GRAPH_JS)."""
    return page.evaluate(_LOAD_GRAPH_JS, graph)


def close_dialogs(page, timeout_s: float = 15.0) -> None:
    """Closes the open dialogs as a user does (Escape) and dismisses an error notice (its close button), so
    that the next check sees only its own. A dialog closes with an animation, which a loaded machine slows
    down: it presses Escape again every 250 ms."""
    deadline = time.monotonic() + timeout_s
    notices = page.locator(NOTICES)
    while notices.count():
        if time.monotonic() > deadline:
            raise AssertionError(f"dialogs stay open after {timeout_s:.0f} s: {notices.all_inner_texts()}")
        page.keyboard.press("Escape")
        dismiss = page.locator('[data-testid="error-overlay-dismiss"]')
        if dismiss.count():
            dismiss.first.click()
        page.wait_for_timeout(250)


def set_widget_values(page, values: dict) -> int:
    """Sets every widget with one of the given names, on every node, as typing into it does; returns how
    many widgets changed."""
    return page.evaluate("""(values) => {
      let changed = 0;
      for (const node of app.graph._nodes)
        for (const widget of node.widgets ?? [])
          if (widget.name in values) { widget.value = values[widget.name]; widget.callback?.(widget.value); changed++; }
      app.graph.setDirtyCanvas(true, true);
      return changed;
    }""", values)


def fit_view(page) -> None:
    page.evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.evaluate("new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)))")


def screenshot_graph(page, path: Path, size: int) -> None:
    """The loaded graph alone (focus mode hides the menus and panels) as a size x size JPEG, fit closer than
    the Fit View command does (that leaves a quarter of the view empty)."""
    from PIL import Image

    page.evaluate("app.extensionManager.focusMode = true")
    try:
        page.wait_for_timeout(300)  # the canvas resizes once the panels are gone
        page.evaluate("""() => {
          const rects = app.graph._nodes.map(n => n.boundingRect);
          const [x0, y0] = [Math.min(...rects.map(r => r[0])), Math.min(...rects.map(r => r[1]))];
          const [x1, y1] = [Math.max(...rects.map(r => r[0] + r[2])), Math.max(...rects.map(r => r[1] + r[3]))];
          app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom: 0.95});
          app.canvas.setDirty(true, true);
          return new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
        }""")
        raw = path.with_suffix(".raw.png")
        page.screenshot(path=str(raw), style='button[aria-label="Show Menu"] { visibility: hidden; }')  # focus mode's exit
    finally:
        page.evaluate("app.extensionManager.focusMode = false")
    with Image.open(raw) as image:
        image.convert("RGB").resize((size, size), Image.LANCZOS).save(path, "JPEG", quality=85, optimize=True)
    raw.unlink()


# Queues the loaded graph as the Queue button does and collects the server's messages, as the page receives
# them, until the run ends, the server refuses the prompt, or the time is up.
_QUEUE_AND_WAIT_JS = """
async ({timeoutMs}) => {
  const names = ['execution_start', 'execution_cached', 'executing', 'progress', 'executed',
                 'execution_success', 'execution_error', 'execution_interrupted'];
  const endings = ['execution_success', 'execution_error', 'execution_interrupted'];
  const events = [];
  const listeners = names.map(type => [type, e => events.push({type, detail: e.detail ?? null})]);
  for (const [type, listener] of listeners) app.api.addEventListener(type, listener);
  const refused = () => Object.keys(app.lastNodeErrors ?? {}).length > 0 || document.querySelector(NOTICES_SELECTOR) !== null;
  const finished = () => events.some(e => endings.includes(e.type));
  try {
    await app.queuePrompt(0);
    const deadline = Date.now() + timeoutMs;
    while (!finished() && !refused() && Date.now() < deadline) await new Promise(r => setTimeout(r, 100));
  } finally {
    for (const [type, listener] of listeners) app.api.removeEventListener(type, listener);
  }
  return {events, finished: finished(), node_errors: app.lastNodeErrors ?? null,
          dialogs: NOTICES_JS};
}
""".replace("NOTICES_JS", _NOTICES_JS).replace("NOTICES_SELECTOR", json.dumps(NOTICES))


def queue_and_wait(page, timeout_s: float) -> dict:
    return page.evaluate(_QUEUE_AND_WAIT_JS, {"timeoutMs": int(timeout_s * 1000)})


def shown_images(page, node_ids: list[int], timeout_s: float = 90.0) -> dict:
    """{node id: [(width, height), ...]} of the images the given nodes display once all have loaded;
    fails (Playwright's TimeoutError) when some node shows no loaded image in time."""
    script = """(ids) => ids.every(id => {
      const imgs = app.graph.getNodeById(id)?.imgs ?? [];
      return imgs.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0);
    })"""
    page.wait_for_function(script, arg=node_ids, timeout=timeout_s * 1000)
    return page.evaluate("""(ids) => Object.fromEntries(ids.map(id =>
      [id, app.graph.getNodeById(id).imgs.map(img => [img.naturalWidth, img.naturalHeight])]))""", node_ids)
