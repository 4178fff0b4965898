"""Pose nodes in-process on real ComfyUI objects: the whole-image fallback as the user meets it, and
faint hand/face points surviving Pose Extract -> Pose Align -> Render Skeleton."""
from __future__ import annotations

import logging

import numpy as np
import torch

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
