"""The real ComfyUI frontend in headless Chromium (Debian's chromium driven by Playwright, no browser
download): every UI workflow loads with no missing or red nodes and no console error caused by it,
and the pose preview scrubs frames and writes a dragged joint back into the workflow.

Every test runs in a matrix of
  frontend:  `bundled` — the comfyui-frontend-package the host's ComfyUI installs (its default web root),
             `latest`  — the newest package from PyPI (tools/setup_frontend.sh puts it in
                         .host/frontend-latest/), served by the same ComfyUI with `--front-end-root`;
  renderer:  `litegraph` — nodes drawn on the LiteGraph canvas (DOM widgets float over it),
             `vue`       — "Nodes 2.0" (setting Comfy.VueNodes.Enabled): every node is a Vue component
                           and the pack's DOM widget lives inside it.
A frontend without Vue nodes gets its `vue` combination skipped with the reason, never a silent pass.

Console noise that belongs to the offline test machine is not held against the pack: requests to
api.comfy.org, a fresh user folder's missing user.css/userdata files, one frontend-internal error
raised while the page boots (before any workflow is loaded), and — for a frontend newer than the host —
calls to server APIs that the host's ComfyUI does not have (checked to be missing on the server).
Screenshots go to test-artifacts/browser/, named after the combination.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ARTIFACTS, ROOT

sys.path.insert(0, str(ROOT / "tools"))
UI = sorted((ROOT / "workflows").glob("*.json"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SHOTS = ARTIFACTS / "browser"
LATEST_ROOT = ROOT / ".host" / "frontend-latest"
VUE_SETTING = "Comfy.VueNodes.Enabled"
# APIs a newer frontend calls that an older ComfyUI may lack; forgiven only when the server really
# answers 404 for them (see host_lacks), with the console errors the frontend logs about them
NEWER_APIS = {"/api/jobs": ("[Jobs API] Error fetching jobs", "Failed to fetch queue: JobsApiError")}


@dataclass(frozen=True)
class Frontend:
    name: str
    root: Path | None        # None: the host's default web root (the installed package)
    version: str | None
    vue_nodes: bool | None   # None: unknown (not installed yet; the fixture says how to install it)


def _bundled() -> Frontend:
    spec = importlib.util.find_spec("comfyui_frontend_package")
    static = Path(next(iter(spec.submodule_search_locations))) / "static" if spec else None
    try:
        version = importlib.metadata.version("comfyui-frontend-package")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return Frontend("bundled", None, version, _has_vue_nodes(static))


def _latest() -> Frontend:
    version = (LATEST_ROOT / "VERSION").read_text().strip() if (LATEST_ROOT / "VERSION").is_file() else None
    return Frontend("latest", LATEST_ROOT, version, _has_vue_nodes(LATEST_ROOT))


def _has_vue_nodes(static: Path | None) -> bool | None:
    """Whether the bundle registers the Nodes 2.0 setting (read from its JavaScript, at collection)."""
    if static is None or not (static / "index.html").is_file():
        return None
    needle = VUE_SETTING.encode()
    return any(needle in js.read_bytes() for js in (static / "assets").glob("*.js"))


FRONTENDS = [_bundled(), _latest()]


def _modes():
    for fe in FRONTENDS:
        for renderer in ("litegraph", "vue"):
            marks = []
            if renderer == "vue" and fe.vue_nodes is False:
                marks = [pytest.mark.skip(reason=f"{fe.name} frontend {fe.version} has no Vue node rendering "
                                                 f"(no {VUE_SETTING} setting in its bundle)")]
            yield pytest.param((fe, renderer), id=f"{fe.name}-{renderer}", marks=marks)


MODES = list(_modes())


def environment_noise(text: str) -> bool:
    return text.startswith("Failed to load resource")   # network responses are checked separately


def host_lacks(server, path: str) -> bool:
    try:
        urllib.request.urlopen(server.url + path, timeout=10).close()
        return False
    except urllib.error.HTTPError as exc:
        return exc.code == 404


@pytest.fixture(scope="module")
def servers(server, tmp_path_factory):
    """frontend name -> a running ComfyServer serving it; the session's server serves the bundled one,
    a second one (same models, inputs and extra model paths; its own user, output and temp) the newest."""
    from ida_server import ComfyServer

    running = {"bundled": server}
    started = []

    def get(fe: Frontend):
        if fe.name not in running:
            if fe.version is None:
                pytest.fail(f"no frontend in {fe.root}: run `bash tools/setup_frontend.sh` (or `make setup`)")
            base = tmp_path_factory.mktemp(f"comfy-base-{fe.name}")
            for shared in ("models", "input"):
                (base / shared).symlink_to(server.base_dir / shared, target_is_directory=True)
            settings = base / "user" / "default" / "comfy.settings.json"
            settings.parent.mkdir(parents=True)
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
            srv = ComfyServer(server.comfy_dir, base, python=server.python,
                              extra_args=[*server.extra_args, "--front-end-root", str(fe.root)])
            srv.start()
            started.append(srv)
            running[fe.name] = srv
        return running[fe.name]

    yield get
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: `make setup` installs Debian's chromium package"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module", params=MODES)
def mode(request, servers):
    """(frontend, renderer, server) of one combination; the renderer is set on the server before the
    page opens, so the graph is built in that mode from the start."""
    fe, renderer = request.param
    srv = servers(fe)
    srv.client.post_json(f"/settings/{VUE_SETTING}", renderer == "vue")
    return fe, renderer, srv


@pytest.fixture(scope="module")
def page(browser, mode):
    fe, renderer, srv = mode
    context = browser.new_context(viewport={"width": 1600, "height": 1000})   # fresh storage per combination
    pg = context.new_page()
    forgiven = {api: texts for api, texts in NEWER_APIS.items() if fe.name != "bundled" and host_lacks(srv, api)}
    forgiven_texts = tuple(t for texts in forgiven.values() for t in texts)

    def on_console(m):
        if m.type == "error" and not environment_noise(m.text) and not m.text.startswith(forgiven_texts):
            pg.ida_errors.append(m.text)

    def on_response(r):
        if (r.status >= 400 and r.url.startswith(srv.url) and "/userdata" not in r.url and "user.css" not in r.url
                and not any(r.url.startswith(srv.url + api) for api in forgiven)):
            pg.ida_bad_responses.append(f"{r.status} {r.url}")

    pg.ida_errors, pg.ida_bad_responses = [], []
    pg.ida_mode = f"{fe.name}-{renderer}"
    pg.ida_vue = renderer == "vue"
    pg.ida_server = srv
    pg.on("console", on_console)
    pg.on("pageerror", lambda e: pg.ida_errors.append(f"pageerror: {e}"))
    pg.on("response", on_response)
    pg.goto(srv.url)
    pg.wait_for_function("window.app && window.app.rootGraph && window.app.canvas && window.app.extensions.length > 0",
                         timeout=120000)
    pg.wait_for_function("() => document.querySelector('.graph-canvas-container, #graph-canvas') !== null")
    state = pg.evaluate(f"""() => ({{version: window.__COMFYUI_FRONTEND_VERSION__,
        vue: window.app.extensionManager.setting.get('{VUE_SETTING}'), ext: window.app.extensions.map(e => e.name)}})""")
    assert state["version"] == fe.version, f"the page runs frontend {state['version']}, expected {fe.name} {fe.version}"
    assert bool(state["vue"]) == pg.ida_vue, f"{VUE_SETTING} is {state['vue']} in the page"
    assert "IdentityAnimator.posePreview" in state["ext"]
    settle(pg)
    boot = [e for e in pg.ida_errors if "identity" in e.lower() or "ida_" in e.lower()]
    assert not boot, f"errors from the pack while the page booted: {boot}"
    pg.ida_errors.clear()
    yield pg
    context.close()


def settle(page, frames: int = 3):
    """Let the frontend render a few frames (draw errors surface), without a fixed sleep."""
    page.evaluate("""(n) => new Promise((done) => { const step = (k) => k ? requestAnimationFrame(() => step(k - 1))
        : done(); step(n); })""", frames)


def shot(page, name: str):
    page.screenshot(path=str(SHOTS / f"{page.ida_mode}_{name}.png"))


def load(page, workflow: dict):
    page.ida_errors.clear()
    page.ida_bad_responses.clear()
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    count = len(workflow["nodes"])
    page.wait_for_function("(n) => window.app.rootGraph.nodes.length === n", arg=count)
    if page.ida_vue:   # every node rendered as a Vue component
        page.wait_for_function("(n) => document.querySelectorAll('.lg-node[data-node-id]').length === n", arg=count)
    settle(page)
    return page.evaluate("""() => window.app.rootGraph.nodes.map(n => ({id: n.id, type: n.type, error: !!n.has_errors,
        registered: !!window.LiteGraph.registered_node_types[n.type],
        preview: n.idaPosePreview ? {connected: n.idaPosePreview.element.isConnected,
            vueNode: n.idaPosePreview.element.closest('.lg-node[data-node-id]')?.dataset.nodeId ?? null} : null}))""")


def node_expr(node_id: int) -> str:
    return f"window.app.rootGraph.getNodeById({node_id})"


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_workflow_loads_cleanly(page, path):
    if page.ida_mode != TEMPLATES_MODE and path.stem not in covering_templates():
        pytest.skip(f"every template loads in {TEMPLATES_MODE}; here {', '.join(covering_templates())} "
                    "load every node type the templates use")
    nodes = load(page, json.loads(path.read_text()))
    assert len(nodes) == len(json.loads(path.read_text())["nodes"])
    missing = [n["type"] for n in nodes if not n["registered"]]
    red = [n["type"] for n in nodes if n["error"]]
    shot(page, path.stem)   # at the frontend's fit-to-view zoom (a template has no saved view)
    if page.ida_mode == TEMPLATES_MODE:
        check_template_as_drawn(page, path)
    assert not missing, f"missing node types: {missing}"
    assert not red, f"red nodes: {red}"
    if page.ida_vue:   # the preview widget is inside its own Vue node (LiteGraph mode mounts only visible ones)
        previews = [n for n in nodes if n["preview"]]
        assert all(n["preview"]["connected"] and n["preview"]["vueNode"] == str(n["id"]) for n in previews), previews
    assert not page.ida_errors, page.ida_errors
    assert not page.ida_bad_responses, page.ida_bad_responses


def run_workflow(page, timeout: float = 60) -> dict:
    """Queue the page's workflow like the Run button and wait for the server to finish that prompt."""
    client = page.ida_server.client
    before = set(client.get_json("/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [v for k, v in client.get_json("/history").items() if k not in before]
        if new and new[0].get("status", {}).get("status_str") in ("success", "error"):
            assert new[0]["status"]["status_str"] == "success", new[0]["status"]
            return new[0]
        time.sleep(0.1)
    raise AssertionError(f"the prompt queued from the page did not finish in {timeout} s")


def newest(folder: Path, pattern: str) -> Path:
    files = sorted(folder.glob(pattern), key=lambda f: f.stat().st_mtime_ns)
    assert files, f"nothing saved as {folder / pattern}"
    return files[-1]


def test_pose_preview_scrubs_and_a_dragged_joint_is_written_back(page, request):
    if page.ida_mode == "bundled-vue":
        # known defect, open: in a full run the bundled frontend's Vue layout can put the frame
        # slider over the preview canvas (seen twice in clean-clone runs, never alone); still run
        request.node.add_marker(pytest.mark.xfail(reason="bundled frontend + Vue nodes: frame slider can "
                                                  "cover the preview canvas in a full run", strict=False))
    from make_ui_workflows import to_ui

    server = page.ida_server
    prefix = f"browser/poses_{page.ida_mode}"
    api = {
        "1": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "driving_poses.json"}},
        "2": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["1", 0], "edits": "{}"}},
        "3": {"class_type": "IDA_SavePoseKeypoints", "inputs": {"pose_keypoint": ["2", 0], "filename_prefix": prefix}},
    }
    load(page, to_ui(api, server.client.get_json("/object_info"), "pose edit"))
    node = node_expr(2)
    out = server.base_dir / "output" / "browser"
    pattern = f"poses_{page.ida_mode}_*.json"
    run_workflow(page)
    page.wait_for_function(f"() => ({node}.idaPosePreview?.frames.length || 0) === 3", timeout=60000)
    # scrub to the last frame
    page.evaluate(f"""() => {{ const s = {node}.idaPosePreview.slider;
        s.value = '2'; s.dispatchEvent(new Event('input')); }}""")
    label = page.evaluate(f"() => {node}.idaPosePreview.label.textContent")
    assert label.startswith("frame 3 / 3") and "1 person" in label
    # put the node in view, clear of the menus, at zoom 1 (LiteGraph moves the DOM widget over the
    # canvas, Vue mode moves the node's element with the graph transform)
    page.evaluate(f"""() => {{ const n = {node}; const c = window.app.canvas;
        c.ds.scale = 1; c.ds.offset = [-n.pos[0] + 300, -n.pos[1] + 200]; c.setDirty(true, true); }}""")
    # the real pointer must land on the preview canvas over joint 3 (right elbow) of person 0; a busy
    # machine can miss a re-layout or leave something over that spot, so the view is placed again,
    # at another spot, until the canvas is what the pointer would hit
    on_canvas = f"""() => {{ const n = {node}; const p = n.idaPosePreview; const [x, y] = p.jointClientPosition(0, 3);
        if (p.canvas.getBoundingClientRect().width > 0 && document.elementFromPoint(x, y) === p.canvas) return true;
        const spots = [[300, 200], [420, 260], [260, 320], [500, 180]];
        window.__idaTry = (window.__idaTry || 0) + 1;
        const [dx, dy] = spots[window.__idaTry % spots.length], c = window.app.canvas;
        c.ds.scale = 1; c.ds.offset = [-n.pos[0] + dx, -n.pos[1] + dy]; c.setDirty(true, true);
        return false; }}"""
    try:
        page.wait_for_function(on_canvas, polling=500, timeout=90000)
    except Exception as exc:
        shot(page, "pose_edit_canvas_not_reached")
        hit = page.evaluate(f"""() => {{ const [x, y] = {node}.idaPosePreview.jointClientPosition(0, 3);
            const e = document.elementFromPoint(x, y); return e ? e.tagName + '.' + e.className : 'nothing'; }}""")
        raise AssertionError(f"the preview canvas never came under the pointer ({hit} is there)") from exc
    settle(page)
    x, y = page.evaluate(f"() => {node}.idaPosePreview.jointClientPosition(0, 3)")
    assert page.evaluate("([x, y]) => document.elementFromPoint(x, y) === " + node + ".idaPosePreview.canvas", [x, y])
    pos_before = page.evaluate(f"() => [...{node}.pos]")
    # drag it by (30, 20) screen pixels
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 30, y + 20, steps=6)
    page.mouse.up()
    settle(page)
    shot(page, "pose_edit_after_drag")
    assert page.evaluate(f"() => [...{node}.pos]") == pos_before, "the drag moved the node instead of the joint"
    edits = json.loads(page.evaluate(f"() => {node}.widgets.find(w => w.name === 'edits').value"))
    assert list(edits) == ["2"] and list(edits["2"]) == ["0"] and list(edits["2"]["0"]) == ["3"], edits
    # the joint followed the pointer: (30, 20) screen pixels at zoom 1 in keypoint pixels
    scale = page.evaluate(f"""() => {{ const p = {node}.idaPosePreview; const v = p.view();
        return v.s * p.canvas.getBoundingClientRect().width / v.cw; }}""")
    original = json.loads((server.base_dir / "input" / "driving_poses.json").read_text())
    x0, y0 = original[2]["people"][0]["pose_keypoints_2d"][9:11]
    assert edits["2"]["0"]["3"] == pytest.approx([x0 + 30 / scale, y0 + 20 / scale], abs=0.2 + 1.5 / scale)
    serialized = page.evaluate("() => window.app.rootGraph.serialize()")
    saved_node = next(n for n in serialized["nodes"] if n["id"] == 2)
    assert json.loads(saved_node["widgets_values"][0]) == edits            # saved with the workflow
    # run again: the moved joint reaches the saved keypoints
    first = newest(out, pattern).stat().st_mtime_ns
    run_workflow(page)
    saved_file = newest(out, pattern)
    assert saved_file.stat().st_mtime_ns > first, "the second run saved no keypoints"
    saved = json.loads(saved_file.read_text())
    moved = saved[2]["people"][0]["pose_keypoints_2d"][9:11]
    assert moved == pytest.approx(edits["2"]["0"]["3"], abs=0.05)
    assert saved[0]["people"][0]["pose_keypoints_2d"][9:11] != moved
    assert not page.ida_errors, page.ida_errors
    assert not page.ida_bad_responses, page.ida_bad_responses


def test_extract_preview_draws_the_skeleton_over_the_frames(page):
    from make_ui_workflows import to_ui

    server = page.ida_server
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face_reference.png"}},
        "2": {"class_type": "IDA_LoadDWPose", "inputs": {"detector": "yolox_l.onnx", "pose_model": "dw-ll_ucoco_384.onnx", "provider": "auto"}},
        "3": {"class_type": "IDA_DWPoseExtract", "inputs": {"dwpose": ["2", 0], "images": ["1", 0]}},
        "4": {"class_type": "IDA_SavePoseKeypoints", "inputs": {"pose_keypoint": ["3", 0], "filename_prefix": f"browser/extract_{page.ida_mode}"}},
    }
    load(page, to_ui(api, server.client.get_json("/object_info"), "extract"))
    node = node_expr(3)
    run_workflow(page)
    page.wait_for_function(f"""() => {{ const p = {node}.idaPosePreview;
        return p && p.frames.length === 1 && p.backgrounds?.[0]?.complete && p.backgrounds[0].naturalWidth > 0; }}""", timeout=60000)
    src = page.evaluate(f"() => {node}.idaPosePreview.backgrounds[0].src")
    assert src.startswith(page.evaluate("() => window.location.origin + window.comfyAPI.api.api.apiURL('/view?')")), src
    settle(page)
    label = page.evaluate(f"() => {node}.idaPosePreview.label.textContent")
    assert label.startswith("frame 1 / 1") and "2 people" in label
    # two people, two different colours
    colours = page.evaluate(f"""() => {{ const p = {node}.idaPosePreview;
        const ctx = p.canvas.getContext('2d'); const seen = new Set();
        for (const person of [0, 1]) {{ for (let j = 0; j < 18; j++) {{
            const f = p.frames[0], t = f.people[person].pose_keypoints_2d;
            if (t[j * 3 + 2] <= 0) continue;
            const v = p.view(); const [x, y] = p.toPixels(t[j * 3], t[j * 3 + 1], f);
            const d = ctx.getImageData(Math.round(v.ox + x * v.s), Math.round(v.oy + y * v.s), 1, 1).data;
            seen.add(person + ':' + d[0] + ',' + d[1] + ',' + d[2]); break; }} }}
        return [...seen]; }}""")
    assert len({c.split(":")[1] for c in colours}) == 2, colours
    shot(page, "pose_extract_preview")
    assert not page.ida_errors, page.ida_errors
    assert not page.ida_bad_responses, page.ida_bad_responses


# ---- issue 13: Pose Align over the reference picture, play button, linked scrubbers ---------------
# One renderer is enough for these (the widget is the same DOM in every mode); CI time is tight.

def _only_bundled_litegraph(page):
    if page.ida_mode != "bundled-litegraph":
        pytest.skip("checked in bundled-litegraph only: the same DOM widget in every mode, and CI time is tight")


def _into_view(page, node_id: int, dx: int = 300, dy: int = 120):
    page.evaluate(f"""() => {{ const n = {node_expr(node_id)}; const c = window.app.canvas;
        c.ds.scale = 1; c.ds.offset = [-n.pos[0] + {dx}, -n.pos[1] + {dy}]; c.setDirty(true, true); }}""")
    settle(page)


def test_pose_align_preview_draws_over_the_reference_image_with_its_report(page):
    _only_bundled_litegraph(page)
    from make_ui_workflows import to_ui

    server = page.ida_server
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},   # one colour: (120, 60, 30)
        "2": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "reference_pose.json"}},
        "3": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "driving_poses.json"}},
        "4": {"class_type": "IDA_PoseAlign", "inputs": {
            # fit_frames 7: a value no other test uses, since a cached Pose Align (not an output node)
            # sends its preview only when it runs
            "reference_pose": ["2", 0], "driving_pose": ["3", 0], "mode": "similarity", "allow_rotation": False,
            "fit_frames": 7, "reference_person": 0, "driving_person": 0, "reference_image": ["1", 0]}},
        "5": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["4", 0], "edits": "{}"}},
    }
    load(page, to_ui(api, server.client.get_json("/object_info"), "align over reference"))
    node = node_expr(4)
    run_workflow(page)
    page.wait_for_function(f"""() => {{ const p = {node}.idaPosePreview;
        return p && p.frames.length === 3 && p.backgrounds?.length === 1 && p.backgrounds[0].complete
            && p.backgrounds[0].naturalWidth > 0; }}""", timeout=60000)
    _into_view(page, 4)
    # the one background stands behind every frame: sample the last frame
    page.evaluate(f"""() => {{ const s = {node}.idaPosePreview.slider; s.value = '2'; s.dispatchEvent(new Event('input')); }}""")
    settle(page)
    px = page.evaluate(f"""() => {{ const p = {node}.idaPosePreview; const v = p.view(); const f = p.frames[p.frame];
        const ctx = p.canvas.getContext('2d');
        const at = (x, y) => [...ctx.getImageData(Math.round(x), Math.round(y), 1, 1).data.slice(0, 3)];
        const t = f.people[0].pose_keypoints_2d;   // joint 1 (neck) is detected in the test pose
        return {{image: at(v.ox + 0.85 * v.w * v.s, v.oy + 0.85 * v.h * v.s),
                 joint: at(v.ox + t[3] * v.s, v.oy + t[4] * v.s), frame: p.frame,
                 outside: v.ox > 2 ? at(v.ox / 2, v.ch / 2) : v.oy > 2 ? at(v.cw / 2, v.oy / 2) : null}}; }}""")
    assert px["frame"] == 2
    # the picture at 55 % over the dark canvas: 0.55 * (120, 60, 30) + 0.45 * 34, JPEG-rounded
    assert px["image"] == pytest.approx([81, 48, 32], abs=8), px
    assert px["joint"][0] > 200 and px["joint"][1] < 140, px            # the skeleton on top (person 0 red)
    if px["outside"] is not None:
        assert px["outside"] == [17, 17, 17], px                         # no picture outside the canvas area
    report = page.evaluate(f"""() => {{ const p = {node}.idaPosePreview; const r = p.report.getBoundingClientRect();
        const box = p.element.getBoundingClientRect();
        return {{text: p.report.textContent, display: getComputedStyle(p.report).display, height: r.height,
                 inside: r.top >= box.top - 1 && r.bottom <= box.bottom + 1,
                 whole: p.report.scrollHeight <= p.report.clientHeight + 1}}; }}""")
    shot(page, "pose_align_over_reference")
    assert report["text"].startswith("mode: similarity") and "fitted on" in report["text"], report
    assert report["display"] != "none" and report["height"] > 14 and report["inside"], report
    assert report["whole"], report   # the node grew to show all of it (with the note on the stretched picture)
    assert "80x64" in report["text"], report
    assert not page.ida_errors, page.ida_errors
    assert not page.ida_bad_responses, page.ida_bad_responses


def test_play_steps_the_frames_and_the_scrubbers_of_pose_previews_move_together(page):
    _only_bundled_litegraph(page)
    from make_ui_workflows import to_ui

    server = page.ida_server
    api = {
        "1": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "ida_samples/ida_sample_dance.json"}},
        "2": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["1", 0], "edits": "{}"}},
        "3": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "driving_poses.json"}},
        "4": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["3", 0], "edits": "{}"}},
    }
    load(page, to_ui(api, server.client.get_json("/object_info"), "play and linked scrubbers"))
    run_workflow(page)   # ends at Pose Edit: no Save node needed
    # only the two Pose Edit nodes are waited for: they are output nodes, which the server shows again
    # when cached; a cached Load Pose Keypoints (its file was loaded by another test) sends nothing
    page.wait_for_function("""() => [[2, 32], [4, 3]].every(([id, n]) =>
        (window.app.rootGraph.getNodeById(id).idaPosePreview?.frames.length || 0) === n)""", timeout=60000)
    frames = "() => [2, 4].map((id) => window.app.rootGraph.getNodeById(id).idaPosePreview.frame)"
    scrub = """([id, i]) => { const s = window.app.rootGraph.getNodeById(id).idaPosePreview.slider;
        s.value = String(i); s.dispatchEvent(new Event('input')); }"""
    # moving one scrubber moves the others, each clamped to its own frame count
    page.evaluate(scrub, [4, 1])
    assert page.evaluate(frames) == [1, 1]
    page.evaluate(scrub, [2, 20])
    assert page.evaluate(frames) == [20, 2]
    assert page.evaluate(f"() => {node_expr(4)}.idaPosePreview.slider.value") == "2"
    assert page.evaluate(f"() => {node_expr(4)}.idaPosePreview.label.textContent").startswith("frame 3 / 3")
    # press play (the real pointer, on the button of node 2)
    _into_view(page, 2)
    button = f"{node_expr(2)}.idaPosePreview.playButton"
    x, y = page.evaluate(f"() => {{ const r = {button}.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }}")
    assert page.evaluate(f"([x, y]) => document.elementFromPoint(x, y) === {button}", [x, y]), "the play button is covered"
    page.mouse.click(x, y)
    page.wait_for_function(f"() => {node_expr(2)}.idaPosePreview.frame >= 23", timeout=5000)
    played, follower = page.evaluate(frames)
    assert follower == 2                   # the other follows, clamped at its last frame
    assert page.evaluate(f"() => {node_expr(2)}.idaPosePreview.label.textContent").startswith(f"frame {played + 1} / 32")
    # it loops at the end, and the other follows it back to the start
    page.wait_for_function(f"() => {node_expr(2)}.idaPosePreview.frame < 2", timeout=8000)
    played, follower = page.evaluate(frames)
    assert follower == min(played, 2), (played, follower)
    page.mouse.click(x, y)   # pause
    assert not page.evaluate(f"() => {node_expr(2)}.idaPosePreview.playing")
    stopped = page.evaluate(frames)
    page.wait_for_timeout(400)   # three frames' time at 8 fps
    assert page.evaluate(frames) == stopped
    assert page.evaluate(f"() => {button}.title").startswith("Play")
    shot(page, "pose_play_linked")
    assert not page.ida_errors, page.ida_errors
    assert not page.ida_bad_responses, page.ida_bad_responses


# ---- issue 13: the templates an artist opens first: groups, notes, fit-to-view, missing models -------
# One combination runs these, and loads every template: TEMPLATES_MODE, the bundled frontend (what the
# host's ComfyUI serves by default, and the one with the missing-models dialog that reads the templates'
# model metadata; the newest frontend lists missing models in its Issues side panel, from the widgets'
# values) on the LiteGraph canvas, whose node sizes the generator's layout is made for. The other
# combinations load start_here plus the fewest templates that bring in every node type used anywhere
# (covering_templates): per combination, what can break is a node type, a link into a widget, a group
# or a note, and those are all there.
TEMPLATES_MODE = "bundled-litegraph"
GUIDED = "start_here"
_COVER: list[str] = []


def covering_templates() -> tuple[str, ...]:
    """start_here, then greedily the template adding the most node types, until every node type of every
    template is in."""
    if not _COVER:
        types = {p.stem: {n["type"] for n in json.loads(p.read_text())["nodes"]} for p in UI}
        chosen, seen = [GUIDED], set(types.get(GUIDED, ()))
        while True:
            best = max(sorted(types), key=lambda k: len(types[k] - seen))
            if not types[best] - seen:
                break
            chosen.append(best)
            seen |= types[best]
        _COVER.extend(chosen)
    return tuple(_COVER)


def _only_templates_mode(page):
    if page.ida_mode != TEMPLATES_MODE:
        pytest.skip(f"checked in {TEMPLATES_MODE} only (see TEMPLATES_MODE)")


def _drawn(page) -> dict:
    """The graph as the frontend has it after loading: node rectangles (title bar included, sizes after
    LiteGraph grew any node to its computed size), groups, zoom, and whether a missing-models dialog is up."""
    return page.evaluate("""() => { const c = window.app.canvas, g = window.app.rootGraph;
        const t = window.LiteGraph.NODE_TITLE_HEIGHT;
        return {scale: c.ds.scale, lowQuality: c.low_quality,
            nodes: g.nodes.map(n => ({id: n.id, type: n.type, rect: [n.pos[0], n.pos[1] - t, n.size[0], n.size[1] + t]})),
            groups: g.groups.map(gr => ({title: gr.title, rect: [...gr.boundingRect], titleHeight: gr.titleHeight})),
            missingModels: !!document.querySelector('.comfy-missing-models')}; }""")


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] - 0.5 and b[0] < a[0] + a[2] - 0.5 and a[1] < b[1] + b[3] - 0.5 and b[1] < a[1] + a[3] - 0.5


def _inside(a, b) -> bool:
    return b[0] - 0.5 <= a[0] and b[1] - 0.5 <= a[1] and a[0] + a[2] <= b[0] + b[2] + 0.5 and a[1] + a[3] <= b[1] + b[3] + 0.5


def check_template_as_drawn(page, path):
    """Called by test_ui_workflow_loads_cleanly in TEMPLATES_MODE for every template, on the session
    server (every model file there): no missing-models dialog; as drawn, no two nodes overlapping, each
    inside one group; the guided templates drawn with their text (above LiteGraph's low-quality zoom; the
    biggest graphs, such as animate_face_refine, need a larger window than this 1600x1000 one for that)."""
    drawn = _drawn(page)
    assert not drawn["missingModels"], f"{path.stem}: a missing-models dialog although every file is installed"
    if path.stem.startswith(GUIDED):
        assert not drawn["lowQuality"], f"{path.stem}: fit-to-view zoom {drawn['scale']:.3f} draws nodes without text"
    nodes, groups = drawn["nodes"], drawn["groups"]
    assert groups, f"{path.stem}: no groups"
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not _overlap(a["rect"], b["rect"]), f"{path.stem}: {a} overlaps {b} as drawn"
        bodies = [g["title"] for g in groups if _inside(a["rect"], [g["rect"][0], g["rect"][1] + g["titleHeight"],
                                                                     g["rect"][2], g["rect"][3] - g["titleHeight"]])]
        assert len(bodies) == 1, f"{path.stem}: {a} is drawn inside {bodies or 'no group'}"


def test_start_here_opens_in_six_groups_with_notes_readable_at_fit_to_view(page):
    _only_templates_mode(page)
    from make_ui_workflows import STAGES

    for name in (GUIDED, f"{GUIDED}_quick_preview"):
        wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
        load(page, wf)
        ids = {n["type"]: n["id"] for n in wf["nodes"]}
        state = page.evaluate("""([render, fit, decode]) => { const g = window.app.rootGraph;
            const link = (id, input) => { const i = g.getNodeById(id).inputs.find((s) => s.name === input);
                const l = i && i.link != null ? g.links.get(i.link) : null; return l ? l.origin_id : null; };
            const notes = g.nodes.filter((n) => n.type === 'MarkdownNote').map((n) => {
                const el = n.widgets?.[0]?.element, h1 = el?.querySelector('.tiptap h1'), box = el?.querySelector('.tiptap');
                return {id: n.id, h1: h1 ? parseFloat(getComputedStyle(h1).fontSize) : 0, text: h1?.textContent ?? '',
                        overflows: box ? box.scrollHeight > box.clientHeight + 1 : true}; });
            return {groups: g.groups.map((gr) => gr.title), scale: window.app.canvas.ds.scale, notes,
                    width: link(render, 'width'), height: link(render, 'height'), fps: link(decode, 'fps'),
                    widthValue: g.getNodeById(render).widgets.find((w) => w.name === 'width').value}; }""",
            [ids["IDA_PoseRender"], ids["IDA_FitReference"], ids["IDA_AnimationDecode"]])
        shot(page, f"fit_{name}")
        assert state["groups"] == STAGES, state["groups"]
        assert len(state["notes"]) == 6, state["notes"]
        for note in state["notes"]:
            # the heading is what must stay legible at fit-to-view: at least 11 px on the screen
            assert note["text"] and note["h1"] * state["scale"] >= 11, (state["scale"], note)
            assert not note["overflows"], f"note {note['id']} does not show all of its text"
        # the size and frame-rate links into widgets arrived as links
        assert state["width"] == state["height"] == ids["IDA_FitReference"], state
        assert state["fps"] == ids["IDA_DrivingVideo"], state
        assert state["widthValue"] == (256 if name.endswith("quick_preview") else 512)
        assert not page.ida_errors, page.ida_errors
        assert not page.ida_bad_responses, page.ida_bad_responses


def test_missing_models_dialog_lists_every_model_file_of_start_here(page):
    """start_here on empty model folders: the bundled frontend asks /api/experiment/models/<folder> for
    each folder a properties.models entry names; here those answers are what an empty folder gives ([]),
    so no third server is started for one dialog. Every file is listed with its address; only
    .safetensors/.sft files get a working Download button in this frontend (its rule), the .pth rows
    show its 'Only allowed suffixes' message."""
    _only_templates_mode(page)
    srv = page.ida_server
    wf = json.loads((ROOT / "workflows" / f"{GUIDED}.json").read_text())
    entries = [m for n in wf["nodes"] for m in n["properties"].get("models", [])]
    assert len(entries) >= 4
    asked = []

    def empty_folder(route):
        asked.append(route.request.url.rsplit("/", 1)[-1])
        route.fulfill(status=200, content_type="application/json", body="[]")

    def file_size(route):   # the dialog asks the download address for the file's size (HEAD)
        route.fulfill(status=200, headers={"content-length": "1000", "access-control-allow-origin": "*"}, body="")

    page.route(f"{srv.url}/api/experiment/models/*", empty_folder)
    page.route("https://huggingface.co/**", file_size)
    try:
        load(page, wf)
        page.wait_for_selector(".comfy-missing-models", timeout=15000)
        settle(page)
        rows = page.evaluate("""() => [...document.querySelectorAll('.comfy-missing-models li')].map((li) => {
            const label = li.querySelector('span[title]'), buttons = [...li.querySelectorAll('button')];
            return {label: label?.textContent.trim(), url: label?.title, error: li.querySelector('.p-message')?.textContent ?? null,
                    download: buttons[0] ? !buttons[0].disabled : false, buttons: buttons.map((b) => b.textContent.trim())}; })""")
        shot(page, "missing_models_start_here")
        listed = {r["label"]: r for r in rows}
        assert sorted(listed) == sorted(f"{m['directory']} / {m['name']}" for m in entries), rows
        for m in entries:
            row = listed[f"{m['directory']} / {m['name']}"]
            assert row["url"] == m["url"], row
            if m["name"].endswith((".safetensors", ".sft")):
                assert row["download"] and not row["error"], row
            else:
                assert not row["download"] and "Only allowed suffixes" in (row["error"] or ""), row
        assert {m["directory"] for m in entries} <= set(asked), asked
        page.keyboard.press("Escape")
        page.wait_for_selector(".comfy-missing-models", state="detached", timeout=5000)
    finally:
        page.unroute(f"{srv.url}/api/experiment/models/*")
        page.unroute("https://huggingface.co/**")
    assert not page.ida_errors, page.ida_errors
    assert not page.ida_bad_responses, page.ida_bad_responses
