"""What face refinement needs from the templates and defaults: the final decode uses the temporal
context the faces were refined under (chunks of 4, the official value), refinement gets Face Boxes'
per-frame landmarks, and every UI template is the same graph as its API twin (the SVD img2vid one is
written by hand: its video size and length are links into widget inputs)."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT

API = sorted((ROOT / "workflows" / "api").glob("*.json"))
UI = {p.stem: p for p in (ROOT / "workflows").glob("*.json")}


def by_type(prompt: dict, class_type: str) -> list[dict]:
    return [n for n in prompt.values() if n["class_type"] == class_type]


def test_decode_and_refinement_chunks_default_to_the_official_4():
    from identity_animator.nodes.decode import AnimationDecode
    from identity_animator.nodes.refine import FaceRefineSampler

    decode = {i.id: i for i in AnimationDecode.define_schema().inputs}["chunk_size"]
    refine = {i.id: i for i in FaceRefineSampler.define_schema().inputs}["chunk"]
    assert decode.default == refine.default == 4
    assert "chunk" in decode.tooltip and "chunk_size" in refine.tooltip    # each says to keep them equal


@pytest.mark.parametrize("path", API, ids=lambda p: p.name)
def test_templates_decode_like_they_refine_and_pass_the_landmarks(path):
    prompt = json.loads(path.read_text())
    for node in by_type(prompt, "IDA_AnimationDecode"):
        assert node["inputs"]["chunk_size"] == 4, path.name
    for node in by_type(prompt, "IDA_FaceRefineSampler"):
        inp = node["inputs"]
        assert inp["chunk"] == 4 and inp["framing"] == "arcface" and inp["decode_precision"] == "fp32"
        boxes, slot = inp["face_landmarks"]
        assert prompt[boxes]["class_type"] == "IDA_FaceBoxes" and slot == 1
        assert inp["face_masks"] == [boxes, 0]               # masks and landmarks from the same Face Boxes


def api_edges(prompt: dict) -> set:
    return {(int(v[0]), v[1], int(nid), name) for nid, n in prompt.items() for name, v in n["inputs"].items()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)}


@pytest.mark.parametrize("path", API, ids=lambda p: p.name)
def test_ui_template_is_the_same_graph_as_its_api_twin(path):
    prompt = json.loads(path.read_text())
    ui = json.loads(UI[path.stem].read_text())
    nodes = {n["id"]: n for n in ui["nodes"] if n["type"] not in ("Note", "MarkdownNote")}   # notes are UI-only
    assert {nid: n["type"] for nid, n in nodes.items()} == {int(k): n["class_type"] for k, n in prompt.items()}
    edges = {(src, slot, dst, nodes[dst]["inputs"][dst_slot]["name"]) for _, src, slot, dst, dst_slot, _ in ui["links"]}
    assert edges == api_edges(prompt)
    for node in ui["nodes"]:
        if node["type"] == "IDA_AnimationDecode":
            assert node["widgets_values"][0] == 4
        if node["type"] == "IDA_FaceRefineSampler":
            assert node["widgets_values"][8] == 4 and node["widgets_values"][-2:] == ["arcface", "fp32"]
