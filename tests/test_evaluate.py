"""Evaluation: the Fréchet distance on known answers, the pixel metrics on identical and shifted frames,
LPIPS on a random backbone file, the I3D file checks, the `make eval` command on tiny synthetic videos
(Markdown + JSON), missing weights, and Identity Check (CSIM) through the real server."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from identity_animator.models import evaluate as ev
from identity_animator.models.checkpoint import CheckpointError

RNG = np.random.default_rng(15)


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("ida_evaluate_tool", ROOT / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module        # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights folder in the expected layout, with random weights: torchvision's AlexNet backbone
    (features only, which is all LPIPS reads) and a Kinetics-400 I3D state dict."""
    import torchvision

    folder = tmp_path_factory.mktemp("evaluation")
    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in alex.items()}, folder / "alexnet-owt-7be5be79.pth")
    torch.save(ev.InceptionI3D().state_dict(), folder / "i3d_pretrained_400.pt")
    return folder


def _psd(d: int) -> np.ndarray:
    a = RNG.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# --- Fréchet distance --------------------------------------------------------------------------------

def test_frechet_distance_known_answers():
    mu, cov = RNG.normal(size=6), _psd(6)
    assert ev.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert ev.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, abs=1e-12)
    # diagonal covariances: |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert ev.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, abs=1e-12)
    # a scaled copy: tr(S + k^2 S - 2 k S) = (1 - k)^2 tr S
    assert ev.frechet_distance(mu, cov, mu, 9 * cov) == pytest.approx(4 * np.trace(cov), rel=1e-10)
    # covariances that do not commute: the textbook formula with scipy's matrix square root
    from scipy.linalg import sqrtm

    c1, c2 = _psd(5), _psd(5)
    want = ((m1[:1] - m2[:1]) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert ev.frechet_distance(np.r_[m1[:1], 0, 0, 0, 0], c1, np.r_[m2[:1], 0, 0, 0, 0], c2) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="one dimension"):
        ev.frechet_distance(mu, cov, mu[:3], cov[:3, :3])


def test_features_of_one_gaussian_are_close_and_of_two_are_not():
    x = RNG.normal(size=(4000, 3))
    assert ev.frechet_distance_of_features(x[:2000], x[2000:]) < 0.02
    assert ev.frechet_distance_of_features(x[:2000], x[2000:] + [2.0, 0, 0]) == pytest.approx(4.0, abs=0.15)
    with pytest.raises(ValueError, match="at least 2"):
        ev.gaussian_stats(x[:1])


# --- pixel metrics ---------------------------------------------------------------------------------

def test_identical_frames_and_a_constant_shift(tool):
    gt = RNG.integers(0, 200, size=(3, 48, 64, 3), dtype=np.uint8)
    same = tool.frame_metrics(gt, gt.copy(), {"l1", "psnr", "ssim"}, None, "disco", torch.device("cpu"))
    assert (same["l1"] == 0).all() and (same["l1_disco"] == 0).all()
    assert torch.isinf(same["psnr"]).all()          # torchmetrics reports inf for identical frames
    assert torch.allclose(same["ssim"], torch.ones(3, dtype=torch.float64), atol=1e-5)
    shifted = tool.frame_metrics(gt + 10, gt, {"l1", "psnr"}, None, "disco", torch.device("cpu"))
    # every value 10/255 off: L1 = 10/255, DisCo's L1 = 10 / (H * W), PSNR = 20 log10(255 / 10)
    assert torch.allclose(shifted["l1"], torch.full((3,), 10 / 255, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(shifted["l1_disco"], torch.full((3,), 10 / (48 * 64), dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(shifted["psnr"], torch.full((3,), 20 * math.log10(255 / 10), dtype=torch.float64), atol=1e-3)


def test_lpips_reads_its_backbone_from_the_weights_folder(tool, weights):
    net = tool.load_lpips("alex", [weights], torch.device("cpu"))
    gt = RNG.integers(0, 255, size=(2, 64, 64, 3), dtype=np.uint8)
    same = tool.frame_metrics(gt, gt.copy(), {"lpips"}, net, "disco", torch.device("cpu"))["lpips"]
    assert torch.allclose(same, torch.zeros(2, dtype=torch.float64), atol=1e-6)
    other = tool.frame_metrics(255 - gt, gt, {"lpips"}, net, "standard", torch.device("cpu"))["lpips"]
    assert (other > 0).all()


def test_missing_or_wrong_weights_say_which_file_and_where(tool, tmp_path, weights):
    with pytest.raises(tool.MissingWeights) as missing:
        tool.load_lpips("vgg", [tmp_path], torch.device("cpu"))
    assert str(missing.value) == f"not computed: vgg16-397923af.pth not found in {tmp_path}"
    with pytest.raises(tool.MissingWeights, match=r"i3d_pretrained_400\.pt not found in"):
        tool.load_i3d([tmp_path], torch.device("cpu"))
    (tmp_path / "alexnet-owt-7be5be79.pth").symlink_to(weights / "i3d_pretrained_400.pt")   # a file of another net
    with pytest.raises(CheckpointError, match="not torchvision's alex ImageNet backbone"):
        tool.load_lpips("alex", [tmp_path], torch.device("cpu"))


def test_i3d_file_layout_is_checked():
    sd = ev.InceptionI3D().state_dict()
    old_style = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}   # older PyTorch saves
    assert not ev.InceptionI3D.from_state_dict(old_style).training
    broken = dict(old_style)
    broken["Mixed_4c.b1b.conv3d.weight"] = torch.zeros(1)
    del broken["logits.conv3d.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing tensors, e\.g\. logits\.conv3d\.bias\. 1 tensors of the "
                                              r"wrong shape, e\.g\. Mixed_4c\.b1b\.conv3d\.weight is \[1\]"):
        ev.InceptionI3D.from_state_dict(broken, source="x.pt")
    # TensorFlow "SAME": ceil(size / stride) outputs
    assert ev.same_padding(224, 7, 2) == (2, 3) and ev.same_padding(7, 3, 2) == (1, 1) and ev.same_padding(4, 1, 1) == (0, 0)
    clips = ev.i3d_clips(torch.zeros(5, 40, 30, 3, dtype=torch.uint8), 2)
    assert clips.shape == (2, 3, 2, 224, 224) and clips.min() == -1


# --- the command -------------------------------------------------------------------------------------

def _write_pngs(folder, frames):
    from PIL import Image

    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """gen/ and gt/: ``dance.mp4`` identical on both sides, ``shifted/`` PNG frames 10 levels brighter on
    the generated side, and a generated ``extra.mp4`` without a partner."""
    from ida_factory import driving_frames, write_video

    root = tmp_path_factory.mktemp("videos")
    frames = driving_frames(4, (64, 64))
    (root / "gen").mkdir()
    (root / "gt").mkdir()
    write_video(root / "gen" / "dance.mp4", frames)
    shutil.copy(root / "gen" / "dance.mp4", root / "gt" / "dance.mp4")
    write_video(root / "gen" / "extra.mp4", frames)
    _write_pngs(root / "gt" / "shifted", frames)
    _write_pngs(root / "gen" / "shifted", frames + 10)
    return root


def test_the_command_writes_markdown_and_json_per_video_and_the_mean(tool, videos, weights, tmp_path):
    out = tmp_path / "report"
    rc = tool.main([str(videos / "gen"), str(videos / "gt"), "--out", str(out), "--weights", str(weights),
                    "--comfyui", str(tmp_path), "--lpips-net", "alex", "--fvd-clip", "2"])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {v["name"]: v for v in report["videos"]}
    assert sorted(rows) == ["dance", "shifted"] and rows["dance"]["frames"] == 4
    assert rows["dance"]["l1"] == 0 and rows["dance"]["psnr"] == "inf" and rows["dance"]["lpips"] == pytest.approx(0, abs=1e-6)
    assert rows["dance"]["ssim"] == pytest.approx(1, abs=1e-5)
    assert rows["shifted"]["psnr"] == pytest.approx(20 * math.log10(25.5), abs=1e-3)
    assert rows["shifted"]["l1"] == pytest.approx(10 / 255, abs=1e-6)
    assert report["mean"]["frames"] == 8 and report["mean"]["l1"] == pytest.approx(5 / 255, abs=1e-6)
    assert report["fvd"]["clips_generated"] == 4 and report["fvd"]["clip_frames"] == 2
    assert math.isfinite(report["fvd"]["value"]) and report["fvd"]["value"] >= 0
    assert report["not_computed"] == {} and any("extra" in n for n in report["notes"])
    md = (tmp_path / "report.md").read_text()
    assert "| dance | 4 | 0.0000 | 0.00E+00 | inf | 1.0000 | 0.0000 |" in md
    assert "| **mean** | 8 |" in md and "**FVD**" in md


def test_missing_weights_are_reported_and_fail_only_when_required(tool, videos, tmp_path):
    args = [str(videos / "gen" / "dance.mp4"), str(videos / "gt" / "dance.mp4"), "--comfyui", str(tmp_path)]
    assert tool.main([*args, "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    folder = tmp_path / "models" / "evaluation"
    assert report["not_computed"]["lpips"].startswith(f"not computed: vgg16-397923af.pth not found in {folder}")
    assert report["not_computed"]["fvd"].startswith(f"not computed: i3d_pretrained_400.pt not found in {folder}")
    md = (tmp_path / "a.md").read_text()
    assert "| LPIPS |" in md and "| not computed |" in md and "FVD not computed: i3d_pretrained_400.pt" in md
    assert tool.main([*args, "--out", str(tmp_path / "b"), "--require", "lpips"]) == 1
    assert tool.main([*args, "--out", str(tmp_path / "c"), "--metrics", "l1,psnr", "--require", "psnr"]) == 0
    assert tool.main([*args, "--out", str(tmp_path / "d"), "--metrics", "csim"]) == 2


# --- CSIM --------------------------------------------------------------------------------------------

def test_csim_of_a_face_with_itself_is_one_and_the_summary_lists_frames():
    from ida_face_models import LANDMARKS, face_image
    from ida_factory import tiny_iresnet_state_dict
    from identity_animator.models.iresnet import IResNet

    arcface = IResNet.from_state_dict(tiny_iresnet_state_dict())
    img = torch.from_numpy(face_image().astype(np.float32) / 255)
    points = (np.array([210.0, 180.0]) + LANDMARKS.numpy() * 120)          # the square's face points
    crop = ev.face_crop(img, points)
    assert crop.shape == (1, 3, 112, 112)
    with torch.no_grad():
        e = ev.embed(arcface, torch.cat([crop, crop]))
    assert torch.allclose(ev.cosine(e, e[0]), torch.ones(2), atol=1e-5)
    assert ev.face_crop(img, points * 0 - 5000) is None                     # a face outside the picture
    result = ev.CsimResult((0.9, None, 0.3, 0.8), 0.5)
    assert result.missing == [1] and result.flagged == [2] and result.mean == pytest.approx(2.0 / 3)
    assert result.summary().splitlines() == [
        "CSIM mean 0.667 over 3 of 4 frame(s) with a face (1.000 = the reference's face); lowest 0.300 at frame 2.",
        "No face found in 1 frame(s): 1.", "1 frame(s) under the threshold 0.50: 2."]
    assert math.isnan(result.as_floats()[1]) and math.isnan(ev.CsimResult((None,), 0.5).mean)
    chart = ev.plot_csim(result)
    assert chart.shape == (320, 640, 3) and ((chart[..., 0] > 180) & (chart[..., 1] < 80)).any()   # a red dot


def face_check_prompt(reference="face_reference.png") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "driving.png"}},           # no face in it
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["7", 0], "image2": ["2", 0]}},
        "4": {"class_type": "IDA_LoadFaceAnalysis", "inputs": {"provider": "cpu"}},
        "5": {"class_type": "IDA_LoadArcFace", "inputs": {"glintr100_name": "glintr100_torch.pth"}},
        "6": {"class_type": "IDA_FaceSimilarity", "inputs": {
            "arcface": ["5", 0], "face_analysis": ["4", 0], "reference": ["1", 0], "frames": ["3", 0],
            "threshold": 0.5, "face_index": 0}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "face_reference.png"}},
    }


def test_identity_check_through_the_server(server):
    info = server.client.get_json("/object_info/IDA_FaceSimilarity")["IDA_FaceSimilarity"]
    assert info["display_name"] == "Identity Check (CSIM)" and info["category"] == "Identity Animator/evaluate"
    assert info["output_is_list"] == [False, True, False, False] and all(info["output_tooltips"])
    result = server.client.run(face_check_prompt(), timeout=300)
    assert result.status == "success", result.error
    shown = result.outputs["6"]
    summary = shown["text"][0]
    assert summary.startswith("CSIM mean 1.000 over 1 of 2 frame(s) with a face"), summary
    assert "No face found in 1 frame(s): 1." in summary and "No frame under the threshold 0.50." in summary
    assert len(shown["images"]) == 1 and shown["images"][0]["type"] == "temp"
    error = server.client.run(face_check_prompt(reference="driving.png"), timeout=300)
    assert error.status == "error" and error.error["node_type"] == "IDA_FaceSimilarity"
    assert error.error["exception_message"].startswith(
        "Identity Check (CSIM): face_index is 0 but no face was found in the reference image.")
    prompt = face_check_prompt()       # Face Boxes' landmarks made for another frame size
    prompt["8"] = {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "driving_poses.json"}}
    prompt["9"] = {"class_type": "IDA_FaceBoxes", "inputs": {"pose_keypoint": ["8", 0], "width": 512, "height": 512,
                                                             "margin": 0.1, "person": 0}}
    prompt["6"]["inputs"]["face_landmarks"] = ["9", 1]
    error = server.client.run(prompt, timeout=300)
    assert error.status == "error" and "face_landmarks were made for 512x512 frames but the frames are 400x400. Set " \
        "Face Boxes' width and height to the frames' size" in error.error["exception_message"]
