"""Face stage: insightface's real code path on tiny antelopev2 stand-ins, the differentiable ArcFace
against the ONNX recogniser, SVD's CLIP preprocessing against diffusers, face boxes, error paths."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from identity_animator.models import face as fm
from identity_animator.models.checkpoint import load_state_dict
from identity_animator.models.iresnet import IResNet
from ida_face_models import export_antelopev2, face_image


@pytest.fixture(scope="module")
def iresnet(tiny_set):
    return IResNet.from_state_dict(load_state_dict(str(tiny_set["glintr100_torch.pth"])))


@pytest.fixture(scope="module")
def insight_root(tmp_path_factory, iresnet):
    root = tmp_path_factory.mktemp("insightface")
    export_antelopev2(root, iresnet)
    return root


@pytest.fixture(scope="module")
def analyzer(insight_root):
    return fm.FaceAnalyzer(str(fm.find_insightface_root([str(insight_root)])), ["CPUExecutionProvider"])


def test_finds_the_face_box_and_landmarks(analyzer):
    res, n = analyzer.analyse(face_image())
    assert n == 1 and res.found
    np.testing.assert_allclose(res.bbox, [150, 120, 270, 240], atol=3)
    np.testing.assert_allclose(res.kps[2], [210, 180 + 0.02 * 120], atol=3)      # nose at the centre
    assert res.embedding.shape == (512,) and res.aligned.shape == (112, 112, 3)


def test_embedding_is_the_raw_arcface_of_the_aligned_crop_and_torch_matches_onnx(analyzer, iresnet):
    """The differentiable iresnet, fed the same aligned crop, gives the ONNX glintr100 embedding."""
    res, _ = analyzer.analyse(face_image())
    crop = torch.from_numpy(res.aligned.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0   # RGB [-1, 1]
    with torch.no_grad():
        ours = iresnet(crop)[0].numpy()
    assert np.abs(ours - res.embedding).max() <= 1e-4 * np.abs(res.embedding).max()
    assert np.linalg.norm(res.embedding) > 1.5  # raw, not the L2-normalised embedding


def test_largest_face_first_and_index(analyzer):
    img = face_image(faces=(("red", 20, 20, 60), ("green", 200, 180, 150)))
    res, n = analyzer.analyse(img)
    assert n == 2 and res.bbox[2] - res.bbox[0] > 140
    small, _ = analyzer.analyse(img, index=1)
    assert small.bbox[2] - small.bbox[0] < 70
    with pytest.raises(fm.NoFaceError, match="face_index=2 but only 2 face"):
        analyzer.analyse(img, index=2)


def test_colour_order_matters_and_bgr_is_the_default(analyzer):
    img = face_image(faces=(("red", 100, 100, 120),))
    assert analyzer.analyse(img)[0].found                      # BGR, as insightface expects
    with pytest.raises(fm.NoFaceError):
        analyzer.analyse(img, color_order="rgb")              # the official inference mix-up


def test_no_face_is_an_error_unless_allowed(analyzer, caplog):
    blank = np.full((300, 300, 3), 30, np.uint8)
    with pytest.raises(fm.NoFaceError, match=r"tried detector sizes \[640, 480, 320\]"):
        analyzer.analyse(blank)
    with caplog.at_level("WARNING"):
        res, n = analyzer.analyse(blank, allow_missing=True)
    assert n == 0 and not res.found and not res.embedding.any()
    assert "ZERO identity embedding" in caplog.text


def test_nested_and_missing_folders_say_how_to_fix(tmp_path, insight_root):
    nested = tmp_path / "nested"
    shutil.copytree(insight_root / "models" / "antelopev2", nested / "models" / "antelopev2" / "antelopev2")
    with pytest.raises(fm.FaceSetupError, match="nested one folder too deep.*Move the .onnx files up one level"):
        fm.find_insightface_root([str(nested)])
    flat = tmp_path / "flat"
    shutil.copytree(insight_root / "models" / "antelopev2", flat / "antelopev2")
    with pytest.raises(fm.FaceSetupError, match="insightface reads"):
        fm.find_insightface_root([str(flat)])
    with pytest.raises(fm.FaceSetupError, match="antelopev2 face models not found"):
        fm.find_insightface_root([str(tmp_path / "empty")])


def test_missing_recogniser_file_is_named(tmp_path, insight_root):
    only_det = tmp_path / "only_det"
    (only_det / "models" / "antelopev2").mkdir(parents=True)
    shutil.copy(insight_root / "models" / "antelopev2" / "scrfd_10g_bnkps.onnx", only_det / "models" / "antelopev2")
    with pytest.raises(fm.FaceSetupError, match="no recognition model"):
        fm.FaceAnalyzer(str(only_det), ["CPUExecutionProvider"])


def test_clip_resize_matches_diffusers_svd():
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    x = torch.rand(2, 3, 333, 517) * 2 - 1
    ours = fm.resize_antialiased(x, (224, 224))
    ref = _resize_with_antialiasing(x, (224, 224))
    assert (ours - ref).abs().max() < 1e-5
    px = fm.clip_pixels(torch.rand(1, 300, 200, 3))
    assert px.shape == (1, 3, 224, 224)


def test_face_boxes_from_face_points_then_head_joints():
    face = np.stack([np.linspace(0.4, 0.6, 68), np.linspace(0.1, 0.3, 68)], -1)
    box = fm.face_box(face, np.ones(68), np.zeros((18, 2)), np.zeros(18))
    np.testing.assert_allclose(box, (0.4, 0.1, 0.6, 0.3))
    body = np.zeros((18, 2))
    body[[0, 14, 15, 16, 17]] = [[0.5, 0.2], [0.48, 0.18], [0.52, 0.18], [0.45, 0.19], [0.55, 0.19]]
    sc = np.zeros(18)
    sc[[0, 14, 15, 16, 17]] = 1.0
    box = fm.face_box(face, np.zeros(68), body, sc)
    np.testing.assert_allclose(box, (0.45, 0.18, 0.55, 0.2))
    assert fm.face_box(None, None, body, np.zeros(18)) is None
    m = fm.box_mask((0.25, 0.25, 0.5, 0.5), 64, 32, margin=0.0)
    assert m.shape == (32, 64) and m.sum() == 16 * 8 and m[8, 16] == 1 and m[7, 16] == 0
    assert fm.box_mask(None, 10, 10, 0.1).sum() == 0


def test_five_points_from_the_68_face_points():
    """insightface's five landmarks: eye centres (mean of points 36-41 and 42-47), nose tip (30), mouth
    corners (48, 54); none when any of them is not seen."""
    g = np.random.default_rng(0)
    face = g.uniform(0.2, 0.8, (68, 2))
    pts = fm.five_points(face, np.ones(68))
    np.testing.assert_allclose(pts, [face[36:42].mean(0), face[42:48].mean(0), face[30], face[48], face[54]])
    for hidden in (38, 45, 30, 48, 54):
        sc = np.ones(68)
        sc[hidden] = 0.1
        assert fm.five_points(face, sc) is None, hidden
    sc = np.ones(68)
    sc[[0, 16, 60]] = 0.0                     # points not used for the five landmarks do not matter
    assert fm.five_points(face, sc) is not None
    assert fm.five_points(None, None) is None
