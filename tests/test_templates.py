"""The UI templates as files (fast, no server): groups and notes, a layout without overlaps, the model
metadata the frontends' missing-models check reads, distinct thumbnails, and the generator's handling of
widgets that receive links (tools/make_ui_workflows.py)."""
from __future__ import annotations

import hashlib
import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import make_ui_workflows as gen  # noqa: E402

UI = sorted((ROOT / "workflows").glob("*.json"))
API = ROOT / "workflows" / "api"
CATALOG = gen.load_catalog()
GUIDED = ("start_here", "start_here_quick_preview")


def load(path):
    return json.loads(path.read_text())


def rect(node):
    """A node's rectangle on the canvas: its title bar sits above pos."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - gen.TITLE_H, w, h + gen.TITLE_H


def body(group):
    """Where a group's nodes may be: its rectangle below its title bar."""
    x, y, w, h = group["bounding"]
    title = group.get("font_size", 24) * 1.4
    return x, y + title, w, h - title


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def inside(a, b) -> bool:
    return b[0] <= a[0] and b[1] <= a[1] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def note_text(wf, stage):
    for n in wf["nodes"]:
        if n["type"] in gen.FRONTEND_NODES and any(
                g["title"] == stage and inside(rect(n), body(g)) for g in wf["groups"]):
            return n["widgets_values"][0]
    return None


def test_every_template_is_in_the_generator_table():
    assert sorted(p.stem for p in UI) == sorted(gen.WORKFLOWS)
    for name, template in gen.WORKFLOWS.items():
        assert (API / template.api).is_file(), f"{name}: no API twin {template.api}"


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_layout_has_no_overlaps_and_every_node_is_in_one_group(path):
    wf = load(path)
    nodes = wf["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not overlap(rect(a), rect(b)), f"{path.stem}: node {a['id']} overlaps node {b['id']}"
    titles = [g["title"] for g in wf["groups"]]
    assert titles == [s for s in gen.STAGES if s in titles], f"{path.stem}: groups {titles}"
    for g, h in ((g, h) for i, g in enumerate(wf["groups"]) for h in wf["groups"][i + 1:]):
        assert not overlap(g["bounding"], h["bounding"]), f"{path.stem}: groups {g['title']} and {h['title']} overlap"
    for n in nodes:
        holders = [g["title"] for g in wf["groups"] if inside(rect(n), body(g))]
        assert len(holders) == 1, f"{path.stem}: node {n['id']} ({n['type']}) is inside {holders or 'no group'}"


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_every_group_has_a_note_and_the_graph_reads_at_fit_to_view(path):
    wf = load(path)
    for g in wf["groups"]:
        text = note_text(wf, g["title"])
        assert text and text.startswith("# "), f"{path.stem}: group {g['title']} has no note with a heading"
    bounds = [rect(n) for n in wf["nodes"]]
    width = max(r[0] + r[2] for r in bounds) - min(r[0] for r in bounds)
    height = max(r[1] + r[3] for r in bounds) - min(r[1] for r in bounds)
    # LiteGraph stops drawing node text below 8 px / 14 px = 0.57 zoom; the guided templates stay above it
    # on both canvases the generator fits to, the others in the browser tests' viewport at least
    views = gen.VIEWS if path.stem in GUIDED else gen.VIEWS[:1]
    scale = min(gen.fit_scale(width, height, v) for v in views)
    limit = 0.58 if path.stem in GUIDED else 0.52
    assert scale >= limit, f"{path.stem}: fit-to-view zoom {scale:.3f} ({width:.0f}x{height:.0f})"


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_loaders_carry_their_catalog_files_for_the_missing_models_check(path):
    wf = load(path)
    wanted = []
    for n in wf["nodes"]:
        files = CATALOG.for_node(n["type"])
        checkable = [m for m in files if m.name.endswith(gen.DIALOG_SUFFIXES)]
        entries = n["properties"].get("models", [])
        assert entries == [{"name": m.name, "url": m.url(), "directory": m.folder} for m in checkable], (
            f"{path.stem}: {n['type']} lists {entries}")
        # the frontends use an entry only while a widget of the node selects that file
        values = {v for v in n.get("widgets_values", []) if isinstance(v, str)}
        assert all(e["name"] in values for e in entries), f"{path.stem}: {n['type']} {entries} vs {values}"
        assert all(e["url"].startswith("https://huggingface.co/") for e in entries)
        wanted += [m for m in files if m not in wanted]
    # every file (the .onnx ones too, which the frontends' check cannot see) is named in the Models note
    # with its address, and recorded in extra
    note = note_text(wf, "Models") or ""
    for m in wanted:
        assert f"[{m.name.rsplit('/', 1)[-1]}]({m.url()})" in note, f"{path.stem}: {m.name} not in the Models note"
    assert wf["extra"]["identity_animator"]["models"] == [m.frontend_entry() for m in wanted]
    assert {m.name.rsplit(".", 1)[-1] for m in wanted if not m.name.endswith(gen.DIALOG_SUFFIXES)} <= {"onnx"}


def test_thumbnails_exist_and_differ():
    digests = {}
    for p in UI:
        jpg = p.with_suffix(".jpg")
        assert jpg.is_file(), f"{p.name} has no thumbnail"
        digest = hashlib.sha256(jpg.read_bytes()).hexdigest()
        assert digest not in digests, f"{jpg.name} is the same picture as {digests[digest]}"
        digests[digest] = jpg.name


@pytest.mark.parametrize("name", GUIDED)
def test_guided_templates_have_all_six_stages(name):
    wf = load(ROOT / "workflows" / f"{name}.json")
    assert [g["title"] for g in wf["groups"]] == gen.STAGES
    meta = wf["extra"]["identity_animator"]
    assert meta["title"] and meta["description"]
    assert {"identity", "StableAnimator", "dance", "animate"} <= set(meta["search_terms"])


def test_quick_preview_is_start_here_made_small():
    full, quick = load(API / "start_here.json"), load(API / "start_here_quick_preview.json")
    assert full.keys() == quick.keys()
    by_type = {n["class_type"]: n["inputs"] for n in quick.values()}
    assert (by_type["IDA_FitReference"]["width"], by_type["IDA_FitReference"]["height"]) == (256, 256)
    assert by_type["IDA_AnimationSampler"]["steps"] <= 8
    assert 0 < by_type["IDA_DrivingVideo"]["frame_cap"] <= 16
    changed = {(k, name) for k in full for name in full[k]["inputs"] if full[k]["inputs"][name] != quick[k]["inputs"][name]}
    types = {full[k]["class_type"] for k, _ in changed}
    assert types <= set(gen.DERIVED["start_here_quick_preview.json"][1]), types


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_nodes_are_their_api_twins_nodes(path):
    """The templates are regenerated whenever their API twins change."""
    wf = load(path)
    api = load(API / gen.WORKFLOWS[path.stem].api)
    ui_nodes = {str(n["id"]): n["type"] for n in wf["nodes"] if n["type"] not in gen.FRONTEND_NODES}
    assert ui_nodes == {k: v["class_type"] for k, v in api.items()}, "run tools/make_ui_workflows.py"
    links = {(str(l[1]), l[2], str(l[3])) for l in wf["links"]}
    api_links = {(v[0], v[1], k) for k, node in api.items() for v in node["inputs"].values() if gen.is_link(v)}
    assert links == api_links, "run tools/make_ui_workflows.py"


# --- the generator on a prompt with the frame-rate and size links (fake /object_info) ---------------
def spec(kind, **opts):
    return [kind, opts]


FAKE_INFO = {
    "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}},
                  "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"],
                  "output_name": ["IMAGE", "MASK"], "display_name": "Load Image"},
    "LoadVideo": {"input": {"required": {"file": ["COMBO", {"options": ["d.mp4"], "video_upload": True}]}},
                  "input_order": {"required": ["file"]}, "output": ["VIDEO"], "output_name": ["VIDEO"],
                  "display_name": "Load Video"},
    "IDA_DrivingVideo": {"input": {"required": {"video": spec("VIDEO"), "frame_cap": spec("INT", default=0)}},
                         "input_order": {"required": ["video", "frame_cap"]},
                         "output": ["IMAGE", "FLOAT", "AUDIO", "INT"],
                         "output_name": ["frames", "fps", "audio", "frame_count"], "display_name": "Driving Video"},
    "IDA_FitReference": {"input": {"required": {"image": spec("IMAGE"), "width": spec("INT", default=512),
                                                "height": spec("INT", default=512)}},
                         "input_order": {"required": ["image", "width", "height"]}, "output": ["IMAGE", "INT", "INT"],
                         "output_name": ["image", "width", "height"], "display_name": "Fit Reference"},
    "IDA_PoseRender": {"input": {"required": {"pose_keypoint": spec("POSE_KEYPOINT"), "width": spec("INT", default=512),
                                              "height": spec("INT", default=512)}},
                       "input_order": {"required": ["pose_keypoint", "width", "height"]}, "output": ["IMAGE"],
                       "output_name": ["pose_images"], "display_name": "Render Skeleton"},
    "IDA_AnimationDecode": {"input": {"required": {"images": spec("IMAGE"), "chunk_size": spec("INT", default=4),
                                                   "fps": spec("FLOAT", default=8.0)},
                                      "optional": {"audio": spec("AUDIO")}},
                            "input_order": {"required": ["images", "chunk_size", "fps"], "optional": ["audio"]},
                            "output": ["IMAGE", "VIDEO"], "output_name": ["images", "video"],
                            "display_name": "Animation Decode"},
}
FAKE_PROMPT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
    "2": {"class_type": "LoadVideo", "inputs": {"file": "d.mp4"}},
    "3": {"class_type": "IDA_DrivingVideo", "inputs": {"video": ["2", 0], "frame_cap": 16}},
    "4": {"class_type": "IDA_FitReference", "inputs": {"image": ["1", 0], "width": 576, "height": 1024}},
    "5": {"class_type": "IDA_KeypointsFromSomewhere", "inputs": {"frames": ["3", 0], "strength": 0.5}},
    "6": {"class_type": "IDA_PoseRender", "inputs": {"pose_keypoint": ["5", 0], "width": ["4", 1], "height": ["4", 2]}},
    "7": {"class_type": "IDA_AnimationDecode", "inputs": {"images": ["6", 0], "chunk_size": 4, "fps": ["3", 1],
                                                          "audio": ["3", 2]}},
}


@pytest.fixture(scope="module")
def fake_ui():
    template = gen.Template("", "fake", "a fake prompt", stages={"IDA_KeypointsFromSomewhere": "Pose check"})
    return gen.to_ui(FAKE_PROMPT, FAKE_INFO, "fake", template, CATALOG)


def test_a_widget_fed_by_a_link_gets_a_socket_naming_it(fake_ui):
    nodes = {n["id"]: n for n in fake_ui["nodes"]}
    links = {l[0]: l for l in fake_ui["links"]}
    render, decode = nodes[6], nodes[7]
    assert [i["name"] for i in render["inputs"]] == ["pose_keypoint", "width", "height"]
    for slot, (name, src_slot) in enumerate([("width", 1), ("height", 2)], start=1):
        entry = render["inputs"][slot]
        assert entry["type"] == "INT" and entry["widget"] == {"name": name}
        link = links[entry["link"]]
        assert link[1:] == [4, src_slot, 6, slot, "INT"]
        assert entry["link"] in nodes[4]["outputs"][src_slot]["links"]
    # the widget keeps a value where the frontend reads it: the source's value for the same widget
    assert render["widgets_values"] == [576, 1024]
    fps = next(i for i in decode["inputs"] if i["name"] == "fps")
    assert fps["widget"] == {"name": "fps"} and fps["type"] == "FLOAT"
    assert links[fps["link"]][1:3] == [3, 1] and links[fps["link"]][5] == "FLOAT"
    assert decode["widgets_values"] == [4, 8.0]          # chunk_size, fps (its default: no fps widget upstream)
    audio = next(i for i in decode["inputs"] if i["name"] == "audio")
    assert "widget" not in audio and links[audio["link"]][1:3] == [3, 2]


def test_a_node_type_the_server_lacks_is_guessed_from_the_prompt(fake_ui):
    node = next(n for n in fake_ui["nodes"] if n["type"] == "IDA_KeypointsFromSomewhere")
    assert [i["name"] for i in node["inputs"]] == ["frames"] and node["inputs"][0]["type"] == "IMAGE"
    assert node["widgets_values"] == [0.5]
    assert len(node["outputs"]) == 1 and node["outputs"][0]["links"]


def test_the_fake_prompt_is_laid_out_in_groups(fake_ui):
    titles = [g["title"] for g in fake_ui["groups"]]
    assert titles == ["Inputs", "Pose check", "Output"]
    nodes = fake_ui["nodes"]
    for i, a in enumerate(nodes):
        assert sum(inside(rect(a), body(g)) for g in fake_ui["groups"]) == 1
        for b in nodes[i + 1:]:
            assert not overlap(rect(a), rect(b))
