"""Bad input through a real ComfyUI server: every probe ends in a message that names the input and
the fix, the server survives it, and the next valid prompt runs. Covers the prompt as the API
sends it (values written in the prompt) and values that arrive through links (primitive nodes),
which the host never checks."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from ida_server import ComfyServer  # noqa: F401  (puts tools/ on the path)
from comfy_client import PromptError  # noqa: E402
from conftest import ROOT
from test_keypoints_skeleton import CN_AUX_FRAME
from test_server import animate_prompt

KEYPOINTS = json.loads((ROOT / "workflows" / "api" / "pose_from_keypoints_json.json").read_text())


def keypoints_prompt(**render) -> dict:
    prompt = copy.deepcopy(KEYPOINTS)
    del prompt["6"]                                   # no files written by these probes
    prompt["4"]["inputs"].update({"width": 64, "height": 64, **render})
    return prompt


def refused(server, prompt) -> tuple[str, dict]:
    """The prompt is refused at validation, before anything runs: (all error text, node_errors)."""
    with pytest.raises(PromptError) as info:
        server.client.queue(prompt)
    details = info.value.details
    errors = details.get("node_errors", {})
    text = " ".join(f"{e['message']}: {e.get('details', '')}" for node in errors.values() for e in node["errors"])
    return text, errors


def failed(server, prompt, timeout=300) -> dict:
    result = server.client.run(prompt, timeout=timeout)
    assert result.status == "error", f"expected a readable error, got {result.status}"
    assert "Traceback" not in result.error["exception_message"]
    return result.error


def still_healthy(server):
    assert server.client.run(keypoints_prompt(), timeout=120).status == "success"


def linked(prompt: dict, node: str, name: str, value) -> dict:
    """``prompt`` with ``node``'s input ``name`` fed by a primitive node, as an artist's converted widget."""
    kind = {bool: "PrimitiveBoolean", int: "PrimitiveInt", float: "PrimitiveFloat", str: "PrimitiveString"}[type(value)]
    prompt = copy.deepcopy(prompt)
    prompt["900"] = {"class_type": kind, "inputs": {"value": value}}
    prompt[node]["inputs"][name] = ["900", 0]
    return prompt


def with_keypoints_file(server, name: str, content: str | bytes) -> Path:
    path = server.base_dir / "input" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# ---- 1. files outside the input folder -------------------------------------------------------------

@pytest.fixture()
def secret(server):
    path = server.base_dir / "secret.json"          # beside input/, not in it
    path.write_text(json.dumps([{**CN_AUX_FRAME, "canvas_width": 9173}]))
    link = server.base_dir / "input" / "looks_local.json"
    link.symlink_to(path)
    yield path
    link.unlink()
    path.unlink()


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_load_pose_keypoints_never_reads_outside_the_input_folder(server, secret, how):
    name = {"relative": "../secret.json", "absolute": str(secret), "symlink": "looks_local.json"}[how]
    prompt = keypoints_prompt()
    prompt["1"]["inputs"]["file"] = name
    text, errors = refused(server, prompt)
    assert "input folder" in text and "9173" not in text
    assert errors["1"]["errors"] and "2" not in errors
    still_healthy(server)


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_a_linked_file_name_is_checked_when_the_node_runs(server, secret, how, monkeypatch):
    """A link into a list widget (from a node with a COMBO or any-type output) reaches validation as
    None; 0.3.75's core nodes have no such output, so the node's own two steps are called here."""
    import folder_paths
    from identity_animator.nodes.pose import LoadPoseKeypoints
    from identity_animator.nodes.validation import InputError

    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(server.base_dir / "input"))
    name = {"relative": "../secret.json", "absolute": str(secret), "symlink": "looks_local.json"}[how]
    assert LoadPoseKeypoints.validate_inputs(file=None) is True
    with pytest.raises(InputError, match="input folder") as info:
        LoadPoseKeypoints.execute(file=name)
    assert "9173" not in str(info.value)
    assert LoadPoseKeypoints.execute(file="reference_pose.json").result[0][0]["canvas_width"] == CN_AUX_FRAME["canvas_width"]


def test_the_file_list_leaves_out_links_that_lead_outside(server, secret):
    info = server.client.get_json("/object_info/IDA_LoadPoseKeypoints")["IDA_LoadPoseKeypoints"]
    options = json.dumps(info["input"]["required"]["file"])
    assert "reference_pose.json" in options and "looks_local.json" not in options


# ---- 2. renders and sizes that would take the server down -----------------------------------------

def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("canvas,node,expect", [
    ((20000, 100), "IDA_LoadPoseKeypoints", "canvas_width is 20000; expected a whole number of pixels from 1 to 16384"),
    ((2000, 100), "IDA_PoseRender", "2000x100 (aspect 20:1); skeletons are drawn for canvases up to 16:1"),
])
def test_an_absurd_keypoint_canvas_is_refused_with_its_size(server, canvas, node, expect):
    w, h = canvas
    with_keypoints_file(server, "strip_pose.json", json.dumps([{**CN_AUX_FRAME, "canvas_width": w, "canvas_height": h}]))
    prompt = keypoints_prompt()
    prompt["1"]["inputs"]["file"] = "strip_pose.json"    # skeletons are drawn on the reference's canvas
    error = failed(server, prompt)
    assert error["node_type"] == node and expect in error["exception_message"]
    still_healthy(server)


def test_a_wide_canvas_renders_bounded(server):
    """8:1 is drawn, on a canvas bounded by pixel count: the official short side would make it 138 MP."""
    with_keypoints_file(server, "wide_pose.json", json.dumps([{**CN_AUX_FRAME, "canvas_width": 3200, "canvas_height": 400}]))
    with_keypoints_file(server, "twenty_poses.json", json.dumps([CN_AUX_FRAME] * 20))
    pid = server.proc.pid
    before = _peak_rss_bytes(pid)
    prompt = keypoints_prompt()
    prompt["1"]["inputs"]["file"] = "wide_pose.json"
    prompt["2"]["inputs"]["file"] = "twenty_poses.json"
    assert server.client.run(prompt, timeout=300).status == "success"
    grown = _peak_rss_bytes(pid) - before
    # one bounded canvas is 18.7 MP x 3 B = 56 MB; unbounded in float64 it was 3.3 GB per frame
    assert grown < 600 * 2**20, f"server peak memory grew by {grown / 2**20:.0f} MiB"
    assert "drawn on a canvas smaller than the official" in server.log_path.read_text()


def test_a_generation_size_that_cannot_fit_is_refused_before_anything_loads(server):
    text, errors = refused(server, keypoints_prompt(width=2048, height=2048))
    assert "2048x2048" in text and "2.36 MP" in text and "Render Skeleton" in text
    text, _ = refused(server, keypoints_prompt(width=4096, height=4096))
    assert "width is 4096; it must be between 64 and 2048" in text
    text, _ = refused(server, keypoints_prompt(width=520, height=512))
    assert "multiple of 64" in text
    error = failed(server, linked(keypoints_prompt(), "4", "width", 4096))
    assert error["node_type"] == "IDA_PoseRender"
    assert "width is 4096" in error["exception_message"] and "2048" in error["exception_message"]
    still_healthy(server)


# ---- 3./4. numbers out of range, linked widgets ----------------------------------------------------

@pytest.mark.parametrize("inputs,expect", [
    ({"steps": 0}, "steps"), ({"steps": -3}, "steps"), ({"min_cfg": -20.0, "max_cfg": -10.0}, "min_cfg"),
    ({"schedule": "bogus"}, "bogus"), ({"window_length": 8, "window_overlap": 8}, "window_overlap (8) must be smaller"),
    ({"min_cfg": 5.0, "max_cfg": 3.0}, "must not exceed max_cfg"),
])
def test_sampler_values_outside_their_range_are_refused_once(server, inputs, expect):
    prompt = animate_prompt()
    prompt["18"]["inputs"].update(inputs)
    text, errors = refused(server, prompt)
    assert expect in text and list(errors) == ["18"]
    # one message per input the node's own check reads (the host's format), not one per input of the node
    assert len(errors["18"]["errors"]) <= 5


@pytest.mark.parametrize("name,value,expect", [
    ("steps", 0, "steps is 0; it must be between 1 and 200"),
    ("window_overlap", 40, "window_overlap (40) must be smaller than window_length (16)"),
    ("min_cfg", -20.0, "min_cfg is -20.0"),
])
def test_linked_values_are_checked_when_the_node_runs(server, name, value, expect):
    error = failed(server, linked(animate_prompt(), "18", name, value))
    assert error["node_type"] == "IDA_AnimationSampler" and expect in error["exception_message"]


def test_linked_widgets_pass_validation_and_run(server):
    prompt = linked(animate_prompt(steps=1), "18", "window_length", 16)
    keypoints = linked(keypoints_prompt(), "4", "width", 128)
    assert server.client.run(keypoints, timeout=120).status == "success"
    assert server.client.run(prompt, timeout=600).status == "success"


# ---- 5. an ID window that never opens --------------------------------------------------------------

def test_an_inverted_id_window_is_refused(server):
    prompt = animate_prompt()
    prompt["16"]["inputs"].update(id_start_percent=0.9, id_end_percent=0.1)
    text, errors = refused(server, prompt)
    assert list(errors) == ["16"] and len(errors["16"]["errors"]) == 2
    assert "id_start_percent (0.9) must be below id_end_percent (0.1)" in text
    assert "id_strength to 0" in text


# ---- 6. pose images and latent of different lengths ------------------------------------------------

@pytest.mark.parametrize("short_side", ["latent", "poses"])
def test_pose_and_latent_frame_counts_must_agree_before_sampling(server, short_side):
    prompt = animate_prompt(steps=1)
    prompt["30"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["8", 0], "batch_index": 0, "length": 5}}
    prompt["17" if short_side == "latent" else "16"]["inputs"]["pose_images"] = ["30", 0]
    result = server.client.run(prompt, timeout=600)
    assert result.status == "error"
    message = result.error["exception_message"]
    assert result.error["node_type"] == "IDA_AnimationSampler"
    counts = ("5 frames", "20 pose images") if short_side == "latent" else ("20 frames", "5 pose images")
    assert all(c in message for c in counts) and "same pose images" in message
    assert not any(e["type"] == "progress" and e["data"].get("node") == "18" for e in result.events)


# ---- 7. keypoint files that are not keypoints ------------------------------------------------------

BAD_FILES = {
    "zero_canvas.json": (json.dumps([{**CN_AUX_FRAME, "canvas_width": 0}]), "frame 0: canvas_width is 0"),
    "huge_canvas.json": (json.dumps([CN_AUX_FRAME, {**CN_AUX_FRAME, "canvas_width": 1000000, "canvas_height": 1}]),
                         "frame 1: canvas_width is 1000000"),
    "people_text.json": (json.dumps([{**CN_AUX_FRAME, "people": "everyone"}]), "frame 0: people is a str"),
    "text_coordinate.json": (json.dumps([{**CN_AUX_FRAME, "people": [{"pose_keypoints_2d": ["left", 1, 1]}]}]),
                             "frame 0, person 0: pose_keypoints_2d[0] is 'left'"),
    "nan_coordinate.json": ('[{"people": [{"pose_keypoints_2d": [NaN, 1, 1]}], "canvas_width": 64, "canvas_height": 64}]',
                            "expected a finite number"),
    "latin1.json": (b'[{"people": [], "canvas_width": 64, "canvas_height": 64, "n": "\xe9"}]', "not UTF-8"),
    "syntax.json": ('[{"people": [], "canvas_width": 64,,}]', "line 1, column"),
    "not_a_list.json": ('"hello"', "non-empty list"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_keypoint_file_names_the_file_the_frame_and_the_field(server, name):
    content, expect = BAD_FILES[name]
    path = with_keypoints_file(server, f"bad/{name}", content)
    try:
        prompt = keypoints_prompt()
        prompt["2"]["inputs"]["file"] = f"bad/{name}"
        error = failed(server, prompt)
        assert error["node_type"] == "IDA_LoadPoseKeypoints"
        assert f"bad/{name}" in error["exception_message"] and expect in error["exception_message"]
    finally:
        os.unlink(path)
    still_healthy(server)


# ---- 8. hand edits that are not edits --------------------------------------------------------------

@pytest.mark.parametrize("edits,expect", [
    ("not json", "not valid JSON"), ("[]", "JSON list"), ('{"a": {}}', "'a' is not a frame number"),
    ('{"0": 5}', 'edits["0"] is 5'), ('{"0": {"0": {"1": [1, 2, 3]}}}', 'edits["0"]["0"]["1"] is [1, 2, 3]'),
    ('{"0": {"0": {"40": [1, 2]}}}', "Joint 40 is not one of the 18"), ('{"9": {}}', "frame 9"),
])
def test_malformed_pose_edits_are_refused_with_the_entry_named(server, edits, expect):
    prompt = keypoints_prompt()
    prompt["7"] = {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["3", 0], "edits": edits}}
    prompt["4"]["inputs"]["pose_keypoint"] = ["7", 0]
    if edits == '{"9": {}}':      # well formed, but names a frame the video does not have: found when it runs
        error = failed(server, prompt)
        assert error["node_type"] == "IDA_PoseEdit" and expect in error["exception_message"]
    else:
        text, errors = refused(server, prompt)
        assert list(errors) == ["7"] and expect in text
        error = failed(server, linked(prompt, "7", "edits", edits))
        assert expect in error["exception_message"]
    still_healthy(server)


# ---- 1. model files only from the model folders ----------------------------------------------------

@pytest.mark.parametrize("node,name,value", [
    ("14", "unet_name", "../../secret.pth"), ("15", "pose_net_name", "/etc/hostname"),
    ("4", "pose_model", "../input/reference.png"), ("11", "ckpt_name", "../../../etc/passwd"),
])
def test_model_names_outside_the_model_folders_are_refused(server, node, name, value):
    prompt = animate_prompt()
    prompt[node]["inputs"][name] = value
    text, errors = refused(server, prompt)
    assert list(errors) == [node] and f"{name}: '{value}' is not in ComfyUI/models/" in text and "Pick a file from the list" in text


# ---- 2. outputs that would not fit in memory -------------------------------------------------------

def test_a_render_that_would_not_fit_in_memory_is_refused(monkeypatch):
    """Thousands of frames at the largest size would be tens of GiB of images: refused, named, before
    any is drawn (free memory is made small here so the test needs none)."""
    import psutil

    from identity_animator.nodes.face import FaceBoxes
    from identity_animator.nodes.pose import PoseRender
    from identity_animator.nodes.validation import InputError

    class Small:
        available = 64 * 2**20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Small())
    poses = [CN_AUX_FRAME] * 40
    with pytest.raises(InputError, match=r"Render Skeleton: 40 skeleton images of 512x512 would take 0\.1 GiB"):
        PoseRender.execute(poses, 512, 512)
    with pytest.raises(InputError, match="Face Boxes: 40 face masks of 512x512"):
        FaceBoxes.execute(poses, 512, 512, 0.1, 0)
    assert PoseRender.execute(poses[:2], 64, 64).result[0].shape == (2, 64, 64, 3)


def test_a_latent_that_is_not_a_video_latent_is_named():
    from identity_animator.nodes.sampling import _check_frames
    from identity_animator.nodes.validation import InputError

    import torch

    with pytest.raises(InputError, match=r"latent is \[2, 16, 8, 8\], not an SVD video latent"):
        _check_frames(None, None, torch.zeros(2, 16, 8, 8))
