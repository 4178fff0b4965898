"""Test setup: the repo is importable as package ``identity_animator``; ComfyUI runs in-process on CPU.

ComfyUI comes from ``COMFYUI_DIR`` or the host that ``make setup`` builds in ``.host/ComfyUI``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_KEYS = ROOT.parent / "shared" / "reference" / "stableanimator_checkpoint_keys.json"
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
    """Tensor name -> shape of the official files, from the shared reference."""
    if not SHARED_KEYS.is_file():
        pytest.fail(f"missing {SHARED_KEYS}: the official key list is part of the shared material")
    return json.loads(SHARED_KEYS.read_text())


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
