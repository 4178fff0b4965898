"""Pose nodes in-process on real ComfyUI objects: the whole-image fallback as the user meets it, and
faint hand/face points surviving Pose Extract -> Pose Align -> Render Skeleton. In a real server: a
graph ending at Pose Edit, the shipped sample driving pose, and Pose Align's preview over the
reference picture with its report."""
from __future__ import annotations

import io
import json
import logging
import importlib.util
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch

from conftest import ROOT

from identity_animator.models import dwpose
from identity_animator.nodes import pose as nodes_pose
from ida_onnx_models import TinyYolox, export


class _Nobody(TinyYolox):
    def forward(self, x):
        out = super().forward(x)
        return torch.cat([out[..., :4], out[..., 4:] * 0.0], -1)


def test_extract_uses_the_whole_frame_when_nobody_is_detected_and_says_so(tmp_path, caplog):
    det = tmp_path / "nobody.onnx"
    torch.onnx.export(_Nobody(True).eval(), torch.zeros(1, 3, 640, 640), str(det), dynamo=False)
    _, pose = export(tmp_path / "p", planted=True)
    net = dwpose.DWPose(str(det), str(pose), providers=["CPUExecutionProvider"])
    frames = torch.rand(3, 96, 128, 3, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger=nodes_pose.logger.name):
        (value,) = nodes_pose.DWPoseExtract.execute(net, frames).result
    assert [len(f["people"]) for f in value] == [1, 1, 1]
    assert "found nobody in 3 of 3 frame(s) [0, 1, 2]" in caplog.text and "whole frame" in caplog.text


def test_faint_points_reach_the_rendered_skeleton():
    from identity_animator.models.keypoints import Person, PoseFrame, to_pose_keypoint
    from test_keypoints_skeleton import body, faint_person

    xy, sc = body()
    ref = to_pose_keypoint([PoseFrame(2160, 3240, [Person(body=xy, body_score=sc)])])
    drv = to_pose_keypoint([PoseFrame(2160, 3240, [faint_person()])] * 2)
    aligned, _ = nodes_pose.PoseAlign.execute(ref, drv, "official", False, 8, 0, 0).result
    (img,) = nodes_pose.PoseRender.execute(aligned, 1088, 1664).result
    p = faint_person()
    x, y = int(p.hand_left[20, 0] * 1088), int(p.hand_left[20, 1] * 1664)
    np.testing.assert_allclose(img[0, y, x].numpy() * 255, [0, 0, int(0.25 * 255)], atol=1e-3)


# ---- issue 13: an artist's first hour ------------------------------------------------------------

SAMPLE = "ida_samples/ida_sample_dance.json"


def test_a_graph_ending_at_pose_edit_runs_and_shows_its_keypoints(server):
    prompt = {
        "1": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "driving_poses.json"}},
        "2": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["1", 0], "edits": '{"1": {"0": {"3": [10, 20]}}}'}},
    }
    result = server.client.run(prompt, timeout=120)
    assert result.status == "success", result.error
    shown = json.loads(result.outputs["2"]["openpose_json"][0])
    assert len(shown) == 3
    assert shown[1]["people"][0]["pose_keypoints_2d"][9:12] == [10, 20, 1]
    assert shown[0]["people"][0]["pose_keypoints_2d"][9:11] != [10, 20]


def test_the_shipped_sample_pose_is_listed_after_the_input_files_and_loads(server):
    spec = server.client.get_json("/object_info/IDA_LoadPoseKeypoints")["IDA_LoadPoseKeypoints"]["input"]["required"]["file"]
    options = spec[1]["options"] if isinstance(spec[1], dict) and "options" in spec[1] else spec[0]
    assert options[-1] == SAMPLE and "reference_pose.json" in options[:-1]
    prompt = {
        "1": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": SAMPLE}},
        "2": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["1", 0], "edits": "{}"}},
    }
    result = server.client.run(prompt, timeout=120)
    assert result.status == "success", result.error
    shipped = json.loads((nodes_pose.SAMPLE_DIR / "ida_sample_dance.json").read_text())
    assert json.loads(result.outputs["2"]["openpose_json"][0]) == shipped


@pytest.mark.parametrize("name", ["ida_samples/../reference_pose.json", "ida_samples/ida_sample_dance.json/",
                                  "ida_samples/../../models/data/poses/ida_sample_dance.json"])
def test_a_sample_name_resolves_only_by_exact_match(server, name):
    from test_bad_input import refused

    prompt = {
        "1": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": name}},
        "2": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["1", 0], "edits": "{}"}},
    }
    text, errors = refused(server, prompt)
    assert "not one of the pose samples shipped with the pack" in text and list(errors) == ["1"]


def test_the_sample_pose_is_what_its_script_writes():
    spec = importlib.util.spec_from_file_location("make_sample_pose", ROOT / "tools" / "make_sample_pose.py")
    make_sample_pose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample_pose)
    shipped = nodes_pose.SAMPLE_DIR / "ida_sample_dance.json"
    assert shipped.read_text(encoding="utf-8") == make_sample_pose.dumps(make_sample_pose.sample_pose())
    assert shipped.stat().st_size < 300_000
    from identity_animator.models.keypoints import from_pose_keypoint

    frames = from_pose_keypoint(json.loads(shipped.read_text()))
    assert 24 <= len(frames) <= 32 and {(f.width, f.height) for f in frames} == {(512, 512)}
    assert all(len(f.people) == 1 and (f.people[0].body_score > 0.3).all() for f in frames)
    wrists = np.array([f.people[0].body[4] for f in frames])   # the waving hand moves
    assert np.ptp(wrists[:, 0]) * 512 > 20


def test_pose_align_draws_over_the_reference_image_and_reports_on_the_node(server):
    from PIL import Image

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
        "2": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "reference_pose.json"}},
        "3": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "driving_poses.json"}},
        "4": {"class_type": "IDA_PoseAlign", "inputs": {
            # fit_frames 6: a value no other test uses, as a cached Pose Align (not an output node) adds
            # nothing to the history
            "reference_pose": ["2", 0], "driving_pose": ["3", 0], "mode": "similarity", "allow_rotation": False,
            "fit_frames": 6, "reference_person": 0, "driving_person": 0, "reference_image": ["1", 0]}},
        "5": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["4", 0], "edits": "{}"}},
    }
    result = server.client.run(prompt, timeout=120)
    assert result.status == "success", result.error
    ui = result.outputs["4"]
    assert len(json.loads(ui["openpose_json"][0])) == 3
    (background,) = ui["ida_frames"]                                    # one picture behind every frame
    assert background["type"] == "temp" and background["subfolder"] == "ida_pose"
    query = urllib.parse.urlencode(background)
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as r:
        img = Image.open(io.BytesIO(r.read()))
        assert img.format == "JPEG"
        pixels = np.asarray(img.convert("RGB"), float)
    assert img.size == (80, 64)                                          # already under the preview size
    np.testing.assert_allclose(pixels.mean((0, 1)), [120, 60, 30], atol=4)
    (report,) = ui["ida_report"]
    assert report.startswith("mode: similarity") and "scale" in report and "fitted on" in report
    # reference.png (80x64) is not the reference pose's 512x768 picture: the node says so
    assert "80x64" in report and "512x768" in report


def test_pose_align_without_a_reference_image_sends_no_background():
    from test_keypoints_skeleton import CN_AUX_FRAME

    result = nodes_pose.PoseAlign.execute([CN_AUX_FRAME], [CN_AUX_FRAME] * 2, "similarity", False, 8, 0, 0)
    assert "ida_frames" not in result.ui and result.ui["ida_report"] == [result.result[1]]
