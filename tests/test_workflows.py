"""The shipped workflows: listed by ComfyUI's template browser, every UI node type and widget value valid
for the live server's /object_info, links type-correct, and every API twin runs with tiny weights."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT

UI = sorted(p for p in (ROOT / "workflows").glob("*.json"))
API = sorted((ROOT / "workflows" / "api").glob("*.json"))
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_NODES = {"Note", "MarkdownNote"}   # the templates' notes: frontend nodes, not in /object_info


@pytest.fixture(scope="module")
def object_info(server):
    return server.client.get_json("/object_info")


def widget_specs(info):
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            if isinstance(spec[0], list) or spec[0] in WIDGETS:
                yield name, spec


def check_value(node_type, name, spec, value):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"{node_type}.{name}={value!r}"
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options", [])
        assert value in options, f"{where} is not one of {options[:8]}"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert opts.get("min", -float("inf")) <= value <= opts.get("max", float("inf")), f"{where} out of range"
        if kind == "INT":
            assert float(value).is_integer(), where
    elif kind == "STRING":
        assert isinstance(value, str), where


def test_templates_are_listed(server):
    listed = server.client.get_json("/api/workflow_templates")
    assert sorted(listed["comfyui-identity-animator"]) == sorted(p.stem for p in UI)
    for p in UI:
        assert p.with_suffix(".jpg").is_file(), f"{p.name} has no thumbnail"


@pytest.mark.parametrize("path", UI, ids=lambda p: p.name)
def test_ui_workflow_matches_object_info(path, object_info):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_NODES:
            continue
        assert node["type"] in object_info, f"{path.name}: unknown node type {node['type']}"
        info = object_info[node["type"]]
        values = list(node.get("widgets_values", []))
        for name, spec in widget_specs(info):
            assert values, f"{path.name}: {node['type']} is missing a value for {name}"
            check_value(node["type"], name, spec, values.pop(0))
            opts = spec[1] if len(spec) > 1 else {}
            # the frontend adds the control widget also to any INT named seed or noise_seed
            control = opts.get("control_after_generate")
            if control or (control is None and spec[0] == "INT" and name in ("seed", "noise_seed")):
                assert values.pop(0) in CONTROL_VALUES
            if opts.get("image_upload") or opts.get("video_upload"):
                values.pop(0)
        assert not values, f"{path.name}: {node['type']} has extra widget values {values}"
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        out_type = object_info[nodes[src]["type"]]["output"][src_slot]
        target = nodes[dst]["inputs"][dst_slot]
        assert target["link"] == link_id
        assert kind == out_type and target["type"] in (out_type, "*"), f"{path.name}: link {link_id} {out_type} -> {target}"


def tiny(prompt: dict, frames: int | None = 8) -> dict:
    """The same graph at sizes a CPU handles in seconds: 64 px, 2 steps and (unless ``frames`` is None)
    at most ``frames`` driving frames, which is one sampling window."""
    for node in prompt.values():
        t, inp = node["class_type"], node["inputs"]
        if t == "IDA_DrivingVideo" and frames is not None:
            inp["frame_cap"] = min(inp["frame_cap"] or frames, frames)
        if t in ("IDA_FitReference", "IDA_PoseRender", "IDA_FaceBoxes") and isinstance(inp.get("width", 512), int):
            tall = inp.get("height", 512) > inp.get("width", 512)
            inp.update(width=64, height=128 if tall else 64)
        elif t in ("IDA_AnimationSampler", "BasicScheduler"):
            inp["steps"] = 2
        elif t == "RepeatImageBatch":   # the video length of the core SVD graph
            inp["amount"] = min(inp["amount"], 4)
        elif t == "IDA_FaceRefineSampler":
            inp.update(end_step=1, iterations=1, chunk=8)
        elif t == "LoadImage" and inp["image"] == "reference.png":
            inp["image"] = "face_reference.png"
    return prompt


REFINE = "animate_face_refine.json"   # also in the compat smoke subset: the whole animation with refinement


LONG = "animate_long_video.json"   # keeps every driving frame: its point is several sampling windows


def tiny_for(path) -> dict:
    return tiny(json.loads(path.read_text()), frames=None if path.name == LONG else 8)


def graph(path) -> str:
    """The tiny graph of an API workflow without what does not change how it runs (titles, file prefixes)."""
    prompt = tiny_for(path)
    for node in prompt.values():
        node.pop("_meta", None)
        node["inputs"].pop("filename_prefix", None)
        if node["class_type"] == "IDA_AnimationSampler":
            node["inputs"]["seed"] = 0
    return json.dumps(prompt, sort_keys=True)


def distinct_graphs() -> dict[str, list]:
    """One API workflow per distinct tiny graph -> the others that make exactly the same graph (e.g. the
    two training sizes, once shrunk to CPU size): each graph runs once, and every workflow is one of them."""
    groups: dict[str, list] = {}
    for p in API:
        groups.setdefault(graph(p), []).append(p)
    return {paths[0].name: paths for paths in groups.values()}


GRAPHS = distinct_graphs()


def test_every_api_workflow_is_one_of_the_graphs_that_run():
    assert sorted(p.name for paths in GRAPHS.values() for p in paths) == sorted(p.name for p in API)
    assert len(GRAPHS) < len(API), "no two workflows share a graph: the grouping is not needed any more"


@pytest.mark.parametrize("path", [pytest.param(paths[0], marks=pytest.mark.compat) if any(p.name == REFINE for p in paths)
                                  else paths[0] for paths in GRAPHS.values()], ids=lambda p: p.name)
def test_api_workflow_runs_with_tiny_weights(path, server):
    result = server.client.run(tiny_for(path), timeout=600)
    assert result.status == "success", (path.name, result.error)
    assert result.outputs, f"{path.name} produced no output"
    if path.name == REFINE:
        assert "Face refinement step 0/2: identity similarity" in server.log()
        assert len(result.outputs["20"]["images"]) == 1
