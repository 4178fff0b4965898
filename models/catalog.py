"""The official model files: where each comes from, where it goes under ``ComfyUI/models``, its size and
licence, and which node loads it.

One list for everything that names a model file: the loader nodes' "not found" messages, the model
metadata the example workflows carry for ComfyUI's missing-models dialog, the help pages and
``tools/models.py``. Plain data with no imports, so ``tools/models.py`` can read it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

HF = "https://huggingface.co"
SA_REPO = "FrancisRing/StableAnimator"
SA_LICENCE = "MIT (StableAnimator repository; the model card says Apache-2.0)"
INSIGHTFACE_LICENCE = "insightface models: non-commercial research use only"
DWPOSE_LICENCE = "DWPose: Apache-2.0 code; models carry the OpenPose (CMU) non-commercial notice"
SVD_LICENCE = "Stability AI Community License (SVD-xt)"
DOWNLOAD_COMMAND = "python custom_nodes/{pack}/tools/models.py download {file}"


@dataclass(frozen=True)
class ModelFile:
    name: str          # path under the folder
    folder: str        # under ComfyUI/models
    repo: str
    path: str          # path in the repository
    size: int | None   # bytes, where the official file size is known
    licence: str
    nodes: tuple[str, ...]

    def url(self, endpoint: str = HF) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/main/{self.path}"

    @property
    def page(self) -> str:
        """The repository page a person can open in a browser (the file's folder in it)."""
        folder = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        return f"{HF}/{self.repo}/tree/main/{folder}".rstrip("/")

    def download_command(self, pack: str = "comfyui-identity-animator") -> str:
        return DOWNLOAD_COMMAND.format(pack=pack, file=self.name.rsplit("/", 1)[-1])

    def where_to_get(self, pack: str = "comfyui-identity-animator") -> str:
        """How to get the official file: its address and the download command."""
        return (f"Download it from {self.url()} or run `{self.download_command(pack)}`, then press R in ComfyUI to "
                "refresh the lists.")

    def frontend_entry(self) -> dict:
        """What ComfyUI's frontend reads from a node's ``properties.models`` for its missing-models dialog."""
        return {"name": self.name, "url": self.url(), "directory": self.folder}


MODELS = [
    ModelFile("unet.pth", "stableanimator", SA_REPO, "Animation/unet.pth", 6_201_376_518, SA_LICENCE,
              ("IDA_LoadAnimationUNet",)),
    ModelFile("pose_net.pth", "stableanimator", SA_REPO, "Animation/pose_net.pth", 829_269, SA_LICENCE,
              ("IDA_LoadPoseNet",)),
    ModelFile("face_encoder.pth", "stableanimator", SA_REPO, "Animation/face_encoder.pth", 228_754_558, SA_LICENCE,
              ("IDA_LoadFaceEncoder",)),
    ModelFile("glintr100_torch.pth", "stableanimator", SA_REPO, "Animation/glintr100_torch.pth", None,
              INSIGHTFACE_LICENCE + " (ArcFace glintr100)", ("IDA_LoadArcFace",)),
    ModelFile("svd_xt.safetensors", "checkpoints", SA_REPO, "stable-video-diffusion-img2vid-xt/svd_xt.safetensors",
              None, SVD_LICENCE, ("IDA_LoadSVDBase",)),
    ModelFile("yolox_l.onnx", "dwpose", SA_REPO, "DWPose/yolox_l.onnx", None, DWPOSE_LICENCE, ("IDA_LoadDWPose",)),
    ModelFile("dw-ll_ucoco_384.onnx", "dwpose", SA_REPO, "DWPose/dw-ll_ucoco_384.onnx", None, DWPOSE_LICENCE,
              ("IDA_LoadDWPose",)),
    *[ModelFile(f"models/antelopev2/{n}.onnx", "insightface", SA_REPO, f"models/antelopev2/{n}.onnx", None,
                INSIGHTFACE_LICENCE, ("IDA_LoadFaceAnalysis",))
      for n in ("scrfd_10g_bnkps", "glintr100", "2d106det", "1k3d68", "genderage")],
]

# the loader input that names each file, for the nodes with a file list
FILE_INPUTS = {
    ("IDA_LoadAnimationUNet", "unet_name"): "unet.pth",
    ("IDA_LoadPoseNet", "pose_net_name"): "pose_net.pth",
    ("IDA_LoadFaceEncoder", "face_encoder_name"): "face_encoder.pth",
    ("IDA_LoadArcFace", "glintr100_name"): "glintr100_torch.pth",
    ("IDA_LoadSVDBase", "ckpt_name"): "svd_xt.safetensors",
    ("IDA_LoadDWPose", "detector"): "yolox_l.onnx",
    ("IDA_LoadDWPose", "pose_model"): "dw-ll_ucoco_384.onnx",
}


def by_name(name: str) -> ModelFile | None:
    """The official file called ``name`` (its path under the folder, or its base name)."""
    return next((m for m in MODELS if name in (m.name, m.name.rsplit("/", 1)[-1])), None)


def for_node(node_type: str) -> list[ModelFile]:
    return [m for m in MODELS if node_type in m.nodes]
