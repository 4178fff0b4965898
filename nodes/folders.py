"""Model folders under ``ComfyUI/models`` (and any ``extra_model_paths.yaml`` entries for them)."""
from __future__ import annotations

import logging
import os

import folder_paths

from ..models import catalog

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


PACK_DIR = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def missing_model_message(folder: str, name, official: catalog.ModelFile | None) -> str:
    """Why ``name`` cannot be loaded from ``folder``, with where the official file comes from."""
    searched = ", ".join(folder_paths.get_folder_paths(folder)) or f"ComfyUI/models/{folder}"
    if official is None:
        return (f"'{name}' is not in the '{folder}' model folder (searched: {searched}). Put the file there and "
                "press R in ComfyUI to refresh the lists.")
    where = f"ComfyUI/models/{official.folder}/ (searched: {searched})"
    if name in (official.name, None):
        return f"{official.name} was not found in {where}. {official.where_to_get(PACK_DIR)}"
    return (f"'{name}' is not in {where}. Pick a file from the list, or put the official {official.name} there. "
            f"{official.where_to_get(PACK_DIR)}")


def full_path(folder: str, name: str, official: catalog.ModelFile | None = None) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(missing_model_message(folder, name, official or catalog.by_name(name)))
    return path


class UnsafePathError(ValueError):
    """A file name that does not stay inside the ComfyUI folder it must come from."""


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:   # another drive on Windows
        return False


def input_file_problem(name, suffixes: tuple[str, ...]) -> str | None:
    """Why ``name`` is not a readable file inside ComfyUI's input folder, or None.

    The name is what the prompt says: a relative path inside the input folder. Absolute paths,
    ``..`` and symlinks that lead out of the folder are refused, so a prompt cannot read other files.
    """
    base = os.path.realpath(folder_paths.get_input_directory())
    if not isinstance(name, str) or not name.strip():
        return f"'{name}' is not a file name. Pick a file from the list (files in {base})."
    if os.path.isabs(name) or name.startswith(("/", "\\")) or os.path.splitdrive(name)[0]:
        return f"'{name}' is an absolute path; only files inside ComfyUI's input folder ({base}) can be read. Copy the file there."
    real = os.path.realpath(os.path.join(base, name))
    if not _inside(real, base):
        return (f"'{name}' leads outside ComfyUI's input folder ({base}); only files inside it can be read. "
                "Copy the file into the input folder.")
    if not name.lower().endswith(suffixes):
        return f"'{name}' is not a {' or '.join(suffixes)} file. Pick one from the list."
    if not os.path.isfile(real):
        return f"'{name}' is not in ComfyUI's input folder ({base}). Put the file there and refresh the node list."
    return None


def input_file(name: str, suffixes: tuple[str, ...]) -> str:
    """The real path of ``name`` inside the input folder; :class:`UnsafePathError` if it is not one."""
    problem = input_file_problem(name, suffixes)
    if problem:
        raise UnsafePathError(problem)
    return os.path.realpath(os.path.join(folder_paths.get_input_directory(), name))
