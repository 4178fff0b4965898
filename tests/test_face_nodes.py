"""Face nodes in-process on real ComfyUI objects, and the ArcFace loader under inference mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from identity_animator.models.face import FaceConditioning, NoFaceError
from identity_animator.models.keypoints import Person, PoseFrame, to_pose_keypoint
from identity_animator.nodes import face as nodes_face
from identity_animator.nodes import loaders
from ida_face_models import export_antelopev2, face_image


@pytest.fixture(scope="module")
def insight_folder(comfy_folders, tiny_set):
    import folder_paths

    from identity_animator.models.checkpoint import load_state_dict
    from identity_animator.models.iresnet import IResNet

    root = comfy_folders / "insightface"
    export_antelopev2(root, IResNet.from_state_dict(load_state_dict(str(tiny_set["glintr100_torch.pth"]))))
    folder_paths.folder_names_and_paths["insightface"] = ([str(root)], {".onnx"})
    return root


def image_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 255.0)[None]


def test_face_embed_node(insight_folder):
    (analysis,) = nodes_face.LoadFaceAnalysis.execute(provider="auto").result
    face, crop, mask = nodes_face.FaceEmbed.execute(analysis, image_tensor(face_image()), 0, "bgr", False).result
    assert face.found and crop.shape == (1, 112, 112, 3) and mask.shape == (1, 400, 400)
    assert mask[0, 180, 200] == 1 and mask[0, 50, 50] == 0
    with pytest.raises(NoFaceError):
        nodes_face.FaceEmbed.execute(analysis, torch.zeros(1, 64, 64, 3), 0, "bgr", False)


def test_face_encode_node_gives_clip_first_five_token_context(insight_folder, svd_parts):
    clip_vision = svd_parts[0]
    (analysis,) = nodes_face.LoadFaceAnalysis.execute(provider="cpu").result
    img = image_tensor(face_image())
    face = nodes_face.FaceEmbed.execute(analysis, img, 0, "bgr", False).result[0]
    (enc,) = loaders.LoadFaceEncoder.execute(face_encoder_name="face_encoder.pth", weight_dtype="fp32").result
    (cond,) = nodes_face.FaceEncode.execute(enc, face, clip_vision, img).result
    assert isinstance(cond, FaceConditioning)
    assert cond.clip_embeds.shape == (1, 1, 1024) and cond.face_tokens.shape == (1, 4, 1024)
    ctx = cond.context
    assert ctx.shape == (1, 5, 1024) and torch.equal(ctx[:, 0], cond.clip_embeds[:, 0])
    # the tokens are the Face Encoder applied to exactly these two inputs
    with torch.no_grad():
        again = enc.model(torch.from_numpy(face.embedding)[None], cond.clip_embeds)
    assert torch.allclose(again, cond.face_tokens, atol=1e-5)


def test_face_boxes_node():
    body = np.zeros((18, 2))
    sc = np.zeros(18)
    face = np.stack([np.linspace(0.4, 0.6, 68), np.linspace(0.1, 0.3, 68)], -1)
    frames = [PoseFrame(100, 200, [Person(body=body, body_score=sc, face=face, face_score=np.ones(68))]),
              PoseFrame(100, 200, [])]
    turned = np.ones(68)
    turned[36:42] = 0.05                       # one eye not seen: a face turned away
    frames.append(PoseFrame(100, 200, [Person(body=body, body_score=sc, face=face, face_score=turned)]))
    masks, marks = nodes_face.FaceBoxes.execute(to_pose_keypoint(frames), 64, 128, 0.0, 0).result
    assert masks.shape == (3, 128, 64)
    assert masks[0, 25, 32] == 1 and masks[0, 5, 32] == 0 and masks[1].sum() == 0 and masks[2].sum() > 0
    # the five points of each frame in pixels of the generation size; none without a face or when turned away
    assert (marks.width, marks.height) == (64, 128) and len(marks) == 3 and marks.points[1] is None and marks.points[2] is None
    px = face * [64, 128]
    np.testing.assert_allclose(marks.points[0], [px[36:42].mean(0), px[42:48].mean(0), px[30], px[48], px[54]], atol=1e-3)


def test_arcface_loaded_under_inference_mode_can_backpropagate(comfy_folders):
    with torch.inference_mode():                      # how ComfyUI runs every node
        (net,) = loaders.LoadArcFace.execute(glintr100_name="glintr100_torch.pth").result
    with torch.inference_mode(False), torch.enable_grad():
        x = (torch.rand(1, 3, 112, 112) * 2 - 1).requires_grad_(True)
        loss = 1 - torch.nn.functional.cosine_similarity(net(x), torch.randn(1, 512)).mean()
        loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
