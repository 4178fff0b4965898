"""Model folders under ``ComfyUI/models`` (and any ``extra_model_paths.yaml`` entries for them)."""
from __future__ import annotations

import logging
import os

import folder_paths

logger = logging.getLogger(__name__)

STABLEANIMATOR = "stableanimator"
DWPOSE = "dwpose"
INSIGHTFACE = "insightface"

_WEIGHTS = {".pth", ".pt", ".safetensors", ".sft", ".bin"}
MODEL_FOLDERS = {
    # Animation/unet.pth, pose_net.pth, face_encoder.pth, glintr100_torch.pth (or their .safetensors)
    STABLEANIMATOR: _WEIGHTS,
    # yolox_l.onnx, dw-ll_ucoco_384.onnx
    DWPOSE: {".onnx"},
    # models/antelopev2/*.onnx, the layout insightface's FaceAnalysis expects under its root
    INSIGHTFACE: {".onnx"},
}


def register_model_folders() -> None:
    """Add the pack's folders, keeping paths that ``extra_model_paths.yaml`` already added.

    A folder name first seen in the yaml gets an empty extension set (which lists every file);
    the pack sets its own extensions explicitly so ``.onnx`` files are listed and stray files are not.
    """
    for name, extensions in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
        paths = list(paths)
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)


def list_files(folder: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    names = folder_paths.get_filename_list(folder)
    if suffixes:
        names = [n for n in names if n.lower().endswith(suffixes)]
    return names


def full_path(folder: str, name: str) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(folder))
        raise FileNotFoundError(
            f"'{name}' is not in the '{folder}' model folder (searched: {searched}). "
            f"Put the file there (see the README's Models section) and refresh the node list."
        )
    return path
