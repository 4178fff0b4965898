"""Bad model files fail at load with a message naming the file or tensor and the fix, never with a raw
exception at run time: tensor shapes that do not fit each other (PoseNet, Face Encoder, ArcFace iresnet),
damaged ONNX files, a DWPose file in the wrong slot, an incomplete insightface folder. Unit level and
through the real server."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from identity_animator.models import dwpose
from identity_animator.models import face as fm
from identity_animator.models.checkpoint import CheckpointError
from identity_animator.models.face_encoder import FaceEncoder
from identity_animator.models.iresnet import IResNet
from identity_animator.models.pose_net import PoseNet
from ida_face_models import export_antelopev2
from ida_factory import tiny_face_encoder_state_dict, tiny_iresnet_state_dict, tiny_pose_net_state_dict
from ida_onnx_models import export

CPU = ["CPUExecutionProvider"]


def reshaped(sd: dict, name: str, shape) -> dict:
    out = dict(sd)
    out[name] = torch.zeros(shape, dtype=sd[name].dtype)
    return out


def corruptions(shape: tuple) -> list[tuple]:
    """Every single-axis change of one size, plus one axis too many and one too few."""
    if not shape:
        return [(1,), (2, 2)]
    out = {shape[:i] + (max(1, shape[i] + d),) + shape[i + 1:] for i in range(len(shape)) for d in (-1, 1, 7)}
    out |= {shape + (1,), shape[:-1]}
    return sorted(out - {shape})


@pytest.fixture(scope="module")
def small_files():
    """The suite's tiny random-weight PoseNet, Face Encoder and iresnet, in the official layouts."""
    return {"pose_net.pth": tiny_pose_net_state_dict(), "face_encoder.pth": tiny_face_encoder_state_dict(),
            "glintr100_torch.pth": tiny_iresnet_state_dict()}


def sweep_shapes(small_files, name) -> dict[str, tuple]:
    if name != "glintr100_torch.pth":
        return {k: tuple(v.shape) for k, v in small_files[name].items()}
    # the same iresnet with two blocks per stage: every kind of tensor, a quarter of the checks
    with torch.device("meta"):
        net = IResNet(blocks=[2, 2, 2, 2], widths=[8, 8, 16, 16])
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# --- shapes checked against each other -------------------------------------------------------------

CONFIG_FROM = {"pose_net.pth": PoseNet.specs_from_state_dict, "face_encoder.pth": FaceEncoder.config_from_state_dict,
               "glintr100_torch.pth": IResNet.config_from_state_dict}


@pytest.mark.parametrize("name", list(CONFIG_FROM))
def test_every_single_corrupted_shape_is_caught_and_named(small_files, name):
    """The class of problem: whichever tensor has whichever wrong shape, the load fails and names it."""
    meta = {k: torch.empty(shape, device="meta") for k, shape in sweep_shapes(small_files, name).items()}
    tried = 0
    for tensor, value in meta.items():
        for shape in corruptions(tuple(value.shape)):
            bad = dict(meta, **{tensor: torch.empty(shape, device="meta")})
            with pytest.raises(CheckpointError) as err:
                CONFIG_FROM[name](bad, source=f"/models/{name}")
            text = str(err.value)
            assert tensor in text and f"/models/{name}" in text, (tensor, shape, text)
            assert f"python tools/models.py download {name}" in text
            tried += 1
    assert tried > 100


@pytest.mark.parametrize("tensor, shape, says", [
    ("conv_layers.4.weight", (16, 5, 3, 3),   # the run-time "weight of size [16, 5, 3, 3]" case
     "conv_layers.4.weight is [16, 5, 3, 3], expected [16, 16, 3, 3]: dimension 1 is the output channels of "
     "conv_layers.2, which is 16 in conv_layers.2.weight and conv_layers.2.bias"),
    ("conv_layers.0.weight", (3, 4, 3, 3), "dimension 1 must be 3 (the first convolution takes the RGB skeleton image)"),
    ("conv_layers.2.weight", (16, 3, 3, 3), "dimension 2 must be 4 (conv_layers.2 has a 4x4 kernel"),
    ("conv_layers.12.bias", (60,), "conv_layers.12.bias is [60], expected [64]"),
    ("final_proj.weight", (64, 100, 1, 1), "final_proj.weight is [64, 100, 1, 1], expected [64, 128, 1, 1]"),
    ("final_proj.bias", (65,), "must agree on the PoseNet output channels"),
    ("scale", (2,), "scale is [2], expected [1]"),
])
def test_pose_net_shape_errors(small_files, tensor, shape, says):
    with pytest.raises(CheckpointError) as err:
        PoseNet.from_state_dict(reshaped(small_files["pose_net.pth"], tensor, shape), source="/m/pose_net.pth")
    text = str(err.value)
    assert says in text
    assert text.startswith("PoseNet (/m/pose_net.pth) has ")
    assert "Delete it and download the official Animation/pose_net.pth" in text


@pytest.mark.parametrize("tensor, shape, says", [
    ("proj.0.weight", (64, 513), "dimension 1 must be 512 (proj takes the 512-d ArcFace embedding)"),
    ("fusion_model.proj_in.weight", (1024, 1000), "fusion_model.proj_in.weight is [1024, 1000], expected [1024, 1024]"),
    ("fusion_model.layers.2.0.to_kv.weight", (130, 1024), "dimension 0 is 2 x the attention width, which is 64"),
    ("fusion_model.layers.3.1.3.weight", (1024, 60), "dimension 1 is the feed-forward width"),
    # a width read from one tensor would make every other tensor look wrong; the majority names this one
    ("norm.weight", (1000,), "has a tensor whose shape does not fit the others. norm.weight is [1000], expected [1024]"),
    ("proj.2.bias", (4000,), "must agree on the face-token values"),
])
def test_face_encoder_shape_errors(small_files, tensor, shape, says):
    with pytest.raises(CheckpointError) as err:
        FaceEncoder.from_state_dict(reshaped(small_files["face_encoder.pth"], tensor, shape), source="/m/face_encoder.pth")
    assert says in str(err.value) and "Animation/face_encoder.pth" in str(err.value)


@pytest.mark.parametrize("tensor, shape, says", [
    ("conv1.weight", (8, 4, 3, 3), "dimension 1 must be 3 (ArcFace takes an RGB face)"),
    ("layer3.0.conv1.weight", (16, 9, 3, 3), "dimension 1 is the layer2 width, which is 8"),
    ("layer2.5.prelu.weight", (7,), "layer2.5.prelu.weight is [7], expected [8]"),
    ("fc.weight", (512, 16 * 48), "dimension 1 is 49 x the layer4 width, which is 16"),
    ("features.running_var", (513,), "dimension 0 must be 512 (the ArcFace embedding is 512-d"),
    ("layer4.2.bn3.num_batches_tracked", (1,), "layer4.2.bn3.num_batches_tracked is [1] but must be a single number"),
])
def test_iresnet_shape_errors(small_files, tensor, shape, says):
    with pytest.raises(CheckpointError) as err:
        IResNet.from_state_dict(reshaped(small_files["glintr100_torch.pth"], tensor, shape), source="/m/glintr100_torch.pth")
    assert says in str(err.value) and "Animation/glintr100_torch.pth" in str(err.value)


def test_official_layouts_catch_a_corrupted_tensor(official_keys):
    """The same checks on the official files' shapes (from the key manifest, no weights)."""
    def meta(file, **changed):
        shapes = dict(official_keys[file], **changed)
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}

    with pytest.raises(CheckpointError, match=r"proj\.0\.weight is \[1024, 513\], expected \[1024, 512\]"):
        FaceEncoder.config_from_state_dict(meta("Animation/face_encoder.pth", **{"proj.0.weight": [1024, 513]}))
    with pytest.raises(CheckpointError, match=r"fusion_model\.layers\.1\.1\.1\.weight is \[4000, 1024\], expected \[4096, 1024\]"):
        FaceEncoder.config_from_state_dict(meta("Animation/face_encoder.pth", **{"fusion_model.layers.1.1.1.weight": [4000, 1024]}))
    with pytest.raises(CheckpointError, match=r"conv_layers\.10\.weight is \[64, 16, 4, 4\], expected \[64, 32, 4, 4\]"):
        PoseNet.specs_from_state_dict(meta("Animation/pose_net.pth", **{"conv_layers.10.weight": [64, 16, 4, 4]}))
    with pytest.raises(CheckpointError, match=r"layer3\.17\.conv2\.weight is \[256, 255, 3, 3\]"):
        IResNet.config_from_state_dict(meta("Animation/glintr100_torch.pth", **{"layer3.17.conv2.weight": [256, 255, 3, 3]}))


def test_a_missing_pose_net_convolution_is_not_a_shorter_network(small_files):
    sd = {k: v for k, v in small_files["pose_net.pth"].items() if not k.startswith("conv_layers.14.")}
    sd["final_proj.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(CheckpointError, match=r"2 missing tensors, e\.g\. conv_layers\.14\.bias, conv_layers\.14\.weight"):
        PoseNet.from_state_dict(sd)


def test_good_files_still_load_with_their_own_widths(small_files):
    assert PoseNet.from_state_dict(small_files["pose_net.pth"]).out_channels == 64
    assert FaceEncoder.from_state_dict(small_files["face_encoder.pth"]).num_tokens == 4
    assert IResNet.from_state_dict(small_files["glintr100_torch.pth"]).input_size == 112


# --- DWPose: damaged files and files in the wrong slot ------------------------------------------------

class OtherNet(nn.Module):
    """An ONNX model with a contract DWPose does not use."""

    def __init__(self, outputs):
        super().__init__()
        self.conv, self.outputs = nn.Conv2d(3, 4, 3), outputs

    def forward(self, x):
        f = self.conv(x).mean((2, 3))                                   # [1, 4]
        return tuple(f.sum(1).reshape(1, 1, 1).expand(*s) for s in self.outputs)


def export_other(path: Path, size, outputs) -> Path:
    torch.onnx.export(OtherNet(outputs).eval(), torch.zeros(1, 3, *size), str(path), dynamo=False,
                      output_names=[f"out{i}" for i in range(len(outputs))])
    return path


@pytest.fixture(scope="module")
def dw_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dwpose-bad")
    det, pose = export(folder, planted=True)
    (folder / "random.onnx").write_bytes(os.urandom(4096))
    data = pose.read_bytes()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 3])
    export_other(folder / "classifier.onnx", (224, 224), [(1, 1, 1000)])
    export_other(folder / "body17.onnx", (256, 192), [(1, 17, 384), (1, 17, 512)])
    return folder


def dw_error(folder, det, pose) -> str:
    with pytest.raises(dwpose.DWPoseModelError) as err:
        dwpose.DWPose(str(folder / det), str(folder / pose), providers=CPU)
    return str(err.value)


def test_detector_in_the_pose_slot_is_named(dw_folder):
    text = dw_error(dw_folder, "yolox_l.onnx", "yolox_l.onnx")
    assert text.startswith("pose_model 'yolox_l.onnx' is a person detector, not the whole-body pose model. "
                           "Pick dw-ll_ucoco_384.onnx as the pose_model")


def test_pose_model_in_the_detector_slot_is_named(dw_folder):
    for pose in ("dw-ll_ucoco_384.onnx", "yolox_l.onnx"):
        text = dw_error(dw_folder, "dw-ll_ucoco_384.onnx", pose)
        assert text.startswith("detector 'dw-ll_ucoco_384.onnx' is the whole-body pose model, not the person "
                               "detector. Pick yolox_l.onnx as the detector")


@pytest.mark.parametrize("slot", ["detector", "pose_model"])
@pytest.mark.parametrize("bad", ["random.onnx", "truncated.onnx"])
def test_damaged_onnx_is_named_with_download_again(dw_folder, slot, bad):
    det, pose = (bad, "dw-ll_ucoco_384.onnx") if slot == "detector" else ("yolox_l.onnx", bad)
    text = dw_error(dw_folder, det, pose)
    assert text.startswith(f"{slot} '{bad}' ({dw_folder / bad}, ")
    assert "is not a readable ONNX model: the file is damaged or incomplete. Delete it and download it again" in text


def test_other_models_say_what_the_slot_needs(dw_folder):
    text = dw_error(dw_folder, "classifier.onnx", "dw-ll_ucoco_384.onnx")
    assert "detector 'classifier.onnx'" in text and "is not DWPose's YOLOX person detector" in text
    assert "[1, 3, 224, 224]" in text and "Pick yolox_l.onnx" in text
    text = dw_error(dw_folder, "yolox_l.onnx", "body17.onnx")
    assert "pose_model 'body17.onnx'" in text and "is not DWPose's whole-body pose model" in text
    assert "[1, 17, 384]" in text and "Pick dw-ll_ucoco_384.onnx" in text


# --- insightface folder ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def antelopev2(tmp_path_factory, small_files):
    root = tmp_path_factory.mktemp("insightface-good")
    export_antelopev2(root, IResNet.from_state_dict(small_files["glintr100_torch.pth"]))
    return root / "models" / "antelopev2"


def pack_with(tmp_path, good: Path, drop=(), extra=None) -> Path:
    root = tmp_path / "insightface"
    pack = root / "models" / "antelopev2"
    shutil.copytree(good, pack)
    for name in drop:
        (pack / name).unlink()
    for name, data in (extra or {}).items():
        (pack / name).write_bytes(data)
    return root


def test_missing_detector_names_folder_file_and_fix(tmp_path, antelopev2):
    root = pack_with(tmp_path, antelopev2, drop=["scrfd_10g_bnkps.onnx"])
    with pytest.raises(fm.FaceSetupError) as err:
        fm.FaceAnalyzer(str(root), CPU)
    text = str(err.value)
    assert f"The insightface folder {root / 'models' / 'antelopev2'} has no detection model" in text
    assert "scrfd_10g_bnkps.onnx (face detection) is missing. It holds: glintr100.onnx." in text
    assert "python tools/models.py download models/antelopev2/scrfd_10g_bnkps.onnx" in text


def test_another_model_under_the_detector_name_is_named(tmp_path, antelopev2):
    root = pack_with(tmp_path, antelopev2, extra={"scrfd_10g_bnkps.onnx": (antelopev2 / "glintr100.onnx").read_bytes()})
    with pytest.raises(fm.FaceSetupError, match="scrfd_10g_bnkps.onnx is there but is not a face detection model"):
        fm.FaceAnalyzer(str(root), CPU)


@pytest.mark.parametrize("bad", ["glintr100.onnx", "scrfd_10g_bnkps.onnx", "1k3d68.onnx"])
def test_damaged_insightface_file_is_named(tmp_path, antelopev2, bad):
    root = pack_with(tmp_path, antelopev2, extra={bad: os.urandom(3000)})
    with pytest.raises(fm.FaceModelError) as err:
        fm.FaceAnalyzer(str(root), CPU)
    text = str(err.value)
    assert text.startswith(f"The insightface model '{bad}' ({root / 'models' / 'antelopev2' / bad}, 3,000 bytes) "
                           "is not a readable ONNX model")
    assert "Delete it and download it again" in text


def test_pack_fingerprint_follows_the_folder(tmp_path, antelopev2):
    root = pack_with(tmp_path, antelopev2)
    before = fm.pack_fingerprint([str(root), str(tmp_path / "absent")])
    assert len(before) == 2 and before == fm.pack_fingerprint([str(root)])
    (root / "models" / "antelopev2" / "glintr100.onnx").unlink()
    assert fm.pack_fingerprint([str(root)]) != before


# --- through the real server ------------------------------------------------------------------------

def only(class_type: str, **inputs) -> dict:
    """A prompt of one loader and a Preview Any on its output, so that the loader runs and nothing else."""
    return {"1": {"class_type": class_type, "inputs": inputs},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


@contextlib.contextmanager
def written(path: Path, data: bytes):
    """``path`` holds ``data`` for the block (a fresh name in one of the server's model folders)."""
    path.write_bytes(data)
    try:
        yield path
    finally:
        path.unlink()


@contextlib.contextmanager
def moved_away(path: Path):
    """``path`` is absent for the block: moved next to its folder and back."""
    aside = path.parent.parent / f"{path.name}.moved-by-test"
    path.rename(aside)
    try:
        yield
    finally:
        aside.rename(path)


def assert_load_error(server, prompt: dict, node_type: str, *says: str) -> None:
    result = server.client.run(prompt, timeout=120)
    assert result.status == "error", result.error
    assert result.error["node_type"] == node_type
    text = result.error["exception_message"]
    for s in says:
        assert s in text, text


def assert_runs(server, prompt: dict) -> None:
    result = server.client.run(prompt, timeout=120)
    assert result.status == "success", result.error


def torch_bytes(sd) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.mark.parametrize("node, input_name, file, tensor, shape, says", [
    ("IDA_LoadPoseNet", "pose_net_name", "pose_net.pth", "conv_layers.4.weight", (16, 5, 3, 3),
     "conv_layers.4.weight is [16, 5, 3, 3], expected [16, 16, 3, 3]"),
    ("IDA_LoadFaceEncoder", "face_encoder_name", "face_encoder.pth", "fusion_model.proj_in.weight", (1024, 1000),
     "fusion_model.proj_in.weight is [1024, 1000], expected [1024, 1024]"),
])
def test_server_bad_shape_is_named_at_load(server, small_files, node, input_name, file, tensor, shape, says):
    folder = server.base_dir / "models" / "stableanimator"
    extra = {"weight_dtype": "fp32"} if node == "IDA_LoadFaceEncoder" else {}
    fresh = f"bad_shape_{file}"
    with written(folder / fresh, torch_bytes(reshaped(small_files[file], tensor, shape))):
        assert_load_error(server, only(node, **{input_name: fresh}, **extra), node, says, fresh,
                                   f"python tools/models.py download {file}")
    assert_runs(server, only(node, **{input_name: file}, **extra))


def dw_prompt(detector="yolox_l.onnx", pose_model="dw-ll_ucoco_384.onnx") -> dict:
    return only("IDA_LoadDWPose", detector=detector, pose_model=pose_model, provider="cpu")


def test_server_dwpose_files_in_the_wrong_slots(server):
    assert_load_error(server, dw_prompt(pose_model="yolox_l.onnx"), "IDA_LoadDWPose",
                               "pose_model 'yolox_l.onnx' is a person detector, not the whole-body pose model",
                               "Pick dw-ll_ucoco_384.onnx")
    assert_load_error(server, dw_prompt(detector="dw-ll_ucoco_384.onnx"), "IDA_LoadDWPose",
                               "detector 'dw-ll_ucoco_384.onnx' is the whole-body pose model", "Pick yolox_l.onnx")
    assert_runs(server, dw_prompt())


def test_server_damaged_dwpose_file(server):
    folder = server.base_dir / "models" / "dwpose"
    with written(folder / "damaged_pose.onnx", os.urandom(5000)):
        assert_load_error(server, dw_prompt(pose_model="damaged_pose.onnx"), "IDA_LoadDWPose",
                                   "pose_model 'damaged_pose.onnx'", "is not a readable ONNX model",
                                   "Delete it and download it again")
    assert_runs(server, dw_prompt())


def face_prompt() -> dict:
    return only("IDA_LoadFaceAnalysis", provider="cpu")


def test_server_insightface_without_detector(server):
    pack = server.base_dir / "models" / "insightface" / "models" / "antelopev2"
    assert_runs(server, face_prompt())       # a loaded analyser must not hide the change to the folder
    with moved_away(pack / "scrfd_10g_bnkps.onnx"):
        assert_load_error(server, face_prompt(), "IDA_LoadFaceAnalysis",
                                   f"The insightface folder {pack} has no detection model",
                                   "scrfd_10g_bnkps.onnx (face detection) is missing",
                                   "python tools/models.py download models/antelopev2/scrfd_10g_bnkps.onnx")
    assert_runs(server, face_prompt())


def test_server_damaged_insightface_file(server):
    pack = server.base_dir / "models" / "insightface" / "models" / "antelopev2"
    assert_runs(server, face_prompt())
    with written(pack / "damaged_extra.onnx", os.urandom(3000)):
        assert_load_error(server, face_prompt(), "IDA_LoadFaceAnalysis",
                                   "The insightface model 'damaged_extra.onnx'", "is not a readable ONNX model",
                                   "can simply be removed")
    assert_runs(server, face_prompt())


@pytest.mark.compat
def test_server_reports_every_missing_model_at_once_with_where_to_get_it(server):
    """An animation whose model files are all absent is refused at validation with one error per loader,
    each naming the official file, its folder, its download address and the download command; nothing runs."""
    import json

    from identity_animator.models import catalog
    from test_bad_input import refused

    prompt = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "animate_512x512.json").read_text())
    loaders = {}
    for nid, node in prompt.items():
        for (node_type, name), official in catalog.FILE_INPUTS.items():
            if node["class_type"] == node_type:
                node["inputs"][name] = f"not_here_{official}"
                loaders.setdefault(nid, []).append(catalog.by_name(official))
    pack = server.base_dir / "models" / "insightface" / "models" / "antelopev2"
    with moved_away(pack.parent):
        _, errors = refused(server, prompt)
    face = next(nid for nid, n in prompt.items() if n["class_type"] == "IDA_LoadFaceAnalysis")
    assert set(errors) == {*loaders, face}, sorted(errors)
    for nid, files in loaders.items():
        text = " ".join(e["details"] for e in errors[nid]["errors"])
        for m in files:
            for says in (f"'not_here_{m.name}' is not in ComfyUI/models/{m.folder}/", f"the official {m.name}", m.url(),
                         f"tools/models.py download {m.name}"):
                assert says in text, (prompt[nid]["class_type"], says, text)
    text = " ".join(e["details"] for e in errors[face]["errors"])
    first = catalog.for_node("IDA_LoadFaceAnalysis")[0]
    assert "antelopev2 face models not found" in text and first.url() in text and "download insightface" in text
    assert_runs(server, face_prompt())
