"""Test setup: the repo is importable as package ``identity_animator``; ComfyUI runs in-process on CPU.

ComfyUI comes from ``COMFYUI_DIR`` or the host that ``make setup`` builds in ``.host/ComfyUI``.
"""
from __future__ import annotations

import importlib.util
import shutil
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS = ROOT / "tests" / "data" / "official_checkpoint_keys.json"
COMFY_DIR = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".host" / "ComfyUI")
CACHE_DIR = Path(os.environ.get("IDA_TEST_CACHE") or ROOT / ".cache" / "test-weights")
ARTIFACTS = Path(os.environ.get("IDA_TEST_ARTIFACTS") or ROOT / "test-artifacts")
PACK = "identity_animator"


def _alias_pack() -> None:
    # The repo folder may be named anything (ComfyUI-IdentityAnimator, a hyphenated clone...):
    # import it under one stable package name, never by putting the repo on sys.path.
    if PACK in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)


def _comfy_on_path() -> None:
    if not (COMFY_DIR / "comfy").is_dir():
        raise RuntimeError(f"No ComfyUI at {COMFY_DIR}: run `make setup` or set COMFYUI_DIR.")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    import utils.install_util  # noqa: F401  (ComfyUI's utils package before comfy/utils.py shadows it)
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management probes for CUDA


_alias_pack()
_comfy_on_path()
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def official_keys() -> dict[str, dict[str, list[int]]]:
    """Tensor name -> shape of the four official files (a manifest kept in the project: data, no weights)."""
    return json.loads(OFFICIAL_KEYS.read_text())


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    """The four official-layout files with tiny random weights."""
    from ida_factory import write_stableanimator_set

    return write_stableanimator_set(tmp_path_factory.mktemp("stableanimator"))


@pytest.fixture(scope="session")
def svd_xt_file():
    """Random SVD-xt checkpoint accepted by ComfyUI's loaders (cached across runs)."""
    from ida_factory import cached_svd_xt

    return cached_svd_xt(CACHE_DIR)


@pytest.fixture(scope="session")
def comfy_folders(tmp_path_factory, tiny_set):
    """Point ComfyUI's folder_paths at a temporary models dir holding the tiny set."""
    import shutil

    import folder_paths
    from identity_animator.nodes.folders import register_model_folders

    models = tmp_path_factory.mktemp("models")
    sa = models / "stableanimator"
    sa.mkdir()
    for name, path in tiny_set.items():
        shutil.copy(path, sa / name)
    saved = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    folder_paths.folder_names_and_paths.pop("stableanimator", None)
    register_model_folders()
    folder_paths.folder_names_and_paths["stableanimator"] = ([str(sa)], folder_paths.folder_names_and_paths["stableanimator"][1])
    folder_paths.filename_list_cache.clear()
    yield models
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.filename_list_cache.clear()


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_set, svd_xt_file):
    base = tmp_path_factory.mktemp("comfy-base")
    models = base / "models"
    (models / "stableanimator").mkdir(parents=True)
    for name, path in tiny_set.items():
        shutil.copy(path, models / "stableanimator" / name)
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "svd_xt.safetensors").symlink_to(svd_xt_file)
    from ida_onnx_models import export

    export(models / "dwpose", planted=True)  # tiny models with DWPose's real input/output contracts
    (models / "dwpose" / "notes.txt").write_text("not a model")
    extra = tmp_path_factory.mktemp("extra-models")
    (extra / "sa").mkdir()
    shutil.copy(tiny_set["unet.pth"], extra / "sa" / "unet_from_yaml.pth")
    yaml = extra / "extra_model_paths.yaml"
    yaml.write_text(f"identity_animator_test:\n  base_path: {extra}\n  stableanimator: sa\n")
    from PIL import Image

    (base / "input").mkdir()
    Image.new("RGB", (80, 64), (120, 60, 30)).save(base / "input" / "reference.png")
    Image.new("RGB", (160, 120), (30, 60, 120)).save(base / "input" / "driving.png")
    from ida_face_models import export_antelopev2, face_image
    from identity_animator.models.checkpoint import load_state_dict
    from identity_animator.models.iresnet import IResNet

    Image.fromarray(face_image()).save(base / "input" / "face_reference.png")
    from ida_factory import driving_frames, write_video

    write_video(base / "input" / "driving.mp4", driving_frames(20))
    export_antelopev2(models / "insightface", IResNet.from_state_dict(load_state_dict(str(tiny_set["glintr100_torch.pth"]))))
    from test_keypoints_skeleton import CN_AUX_FRAME

    (base / "input" / "reference_pose.json").write_text(json.dumps([CN_AUX_FRAME]))
    (base / "input" / "driving_poses.json").write_text(json.dumps([CN_AUX_FRAME] * 3))
    # a returning user: no first-run templates dialog over the canvas in the browser tests
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    from ida_server import ComfyServer

    with ComfyServer(COMFY_DIR, base, extra_args=["--extra-model-paths-config", str(yaml)]) as srv:
        yield srv




@pytest.fixture(scope="session")
def svd_parts(svd_xt_file):
    """(clip_vision, vae) from the SVD-xt test checkpoint through ComfyUI's own loader, loaded once."""
    import comfy.sd
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(svd_xt_file))
    out = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=False, output_clipvision=True,
                                                output_model=False)
    del sd
    return out[3], out[2]


@pytest.fixture(scope="session")
def svd_vae(svd_parts):
    return svd_parts[1]


def decode_with_gradients(vae, z):
    """Refinement's private decoder built as ComfyUI runs a node (inference mode), then a backward
    through it: (decoder, output, latent with its gradient)."""
    import torch
    from identity_animator.nodes.refine import GradDecoder

    with torch.inference_mode():
        dec = GradDecoder(vae, lambda x: x, torch.device("cpu"), torch.float32)
    with torch.inference_mode(False), torch.enable_grad():
        zz = z.clone().requires_grad_(True)
        out = dec(zz)
        out.square().mean().backward()
    return dec, out, zz
