"""The `.safetensors` twins that `make convert` writes beside a `.pth`: used while current, passed over
(with a warning naming the twin and the fix) when damaged or out of date; and the SVD-xt loader's
refusal of code pickles, in the pack's words. Unit tests first, then the same cases through a real server."""
from __future__ import annotations

import os
import shutil
import uuid

import pytest
import torch
from safetensors.torch import save_file

from identity_animator.models import checkpoint as ck
from identity_animator.models.checkpoint import CheckpointError, convert_to_safetensors, load_preferred, load_state_dict

GARBAGE = b"\x00" * 3 + b"not safetensors at all" * 40


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def pth(tiny_set, tmp_path):
    """A fresh copy of the tiny pose_net.pth; its twin's name is ``pth.with_suffix('.safetensors')``."""
    path = tmp_path / "pose_net.pth"
    shutil.copy(tiny_set["pose_net.pth"], path)
    return path


def _twin(pth):
    return pth.with_suffix(".safetensors")


def _make_older(path, seconds=100):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def _resave_with_other_values(pth):
    """Same tensor names and shapes (so the same file size), other values; the mtime moves on."""
    # cloned: the loaded tensors map the file that is about to be overwritten
    sd = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in load_state_dict(str(pth)).items()}
    before = pth.stat()
    torch.save(sd, pth)
    os.utime(pth, ns=(before.st_atime_ns, before.st_mtime_ns + 5 * 10**9))
    return sd


def _assert_advice(text, twin, pth):
    assert str(twin) in text and str(pth) in text
    assert f'make convert FILES="{pth}"' in text and "or delete it" in text
    assert "download" not in text.lower()


# --- unit: choosing and loading -------------------------------------------------------------------


def test_fresh_twin_is_loaded_silently(pth):
    twin = convert_to_safetensors(str(pth))
    loaded = load_preferred(str(pth))
    assert loaded.path == twin and loaded.warnings == ()
    assert _same(loaded.state_dict, load_state_dict(str(pth)))
    assert ck.preferred_path(str(pth)) == twin


def test_convert_records_the_source_in_the_twin_metadata(pth):
    st = pth.stat()
    meta = ck.read_metadata(convert_to_safetensors(str(pth)))
    assert meta["converted_from"] == "pose_net.pth" and meta["format"] == "pt"
    assert meta["source_size"] == str(st.st_size) and meta["source_mtime_ns"] == str(st.st_mtime_ns)
    assert len(meta["source_head_tail_sha256"]) == 64


def test_convert_command_records_the_source(pth):
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoints.py"), str(pth)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ck.read_metadata(str(_twin(pth)))["source_size"] == str(pth.stat().st_size)


def test_corrupt_twin_falls_back_to_the_pth_with_a_warning(pth):
    _twin(pth).write_bytes(GARBAGE)
    loaded = load_preferred(str(pth))
    assert loaded.path == str(pth)
    assert _same(loaded.state_dict, load_state_dict(str(pth)))
    (warning,) = loaded.warnings
    assert warning.startswith(f"Could not read {_twin(pth)}, the .safetensors twin converted from {pth}")
    assert f"Loading {pth} instead." in warning
    _assert_advice(warning, _twin(pth), pth)


def test_twin_whose_tensors_do_not_read_falls_back(pth, monkeypatch):
    # the header reads (so the twin is chosen) but its tensors do not: the .pth is loaded after all
    convert_to_safetensors(str(pth))

    def broken(path):
        raise ck.SafetensorError("Error while deserializing header: incomplete metadata")

    monkeypatch.setattr(ck, "_read_safetensors", broken)
    loaded = load_preferred(str(pth))
    assert loaded.path == str(pth) and len(loaded.warnings) == 1
    assert "incomplete metadata" in loaded.warnings[0]
    _assert_advice(loaded.warnings[0], _twin(pth), pth)


def test_corrupt_twin_and_broken_pth_name_both(pth):
    _twin(pth).write_bytes(GARBAGE)
    pth.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_preferred(str(pth))
    text = str(err.value)
    assert text.startswith(f"Could not read {pth}: it is not a torch checkpoint")
    assert f"Its twin was no use either: Could not read {_twin(pth)}" in text


def test_stale_twin_by_size_loads_the_pth(pth):
    convert_to_safetensors(str(pth))
    old_size = pth.stat().st_size
    sd = {**{k: v.clone() for k, v in load_state_dict(str(pth)).items()}, "extra": torch.zeros(1000)}
    torch.save(sd, pth)
    loaded = load_preferred(str(pth))
    assert loaded.path == str(pth) and _same(loaded.state_dict, sd)
    (warning,) = loaded.warnings
    assert warning.startswith(
        f"{_twin(pth)} is out of date: pose_net.pth is now {pth.stat().st_size:,} bytes, "
        f"the twin was converted from {old_size:,} bytes. Loading {pth} instead.")
    _assert_advice(warning, _twin(pth), pth)


def test_stale_twin_by_content_loads_the_pth(pth):
    convert_to_safetensors(str(pth))
    size = pth.stat().st_size
    sd = _resave_with_other_values(pth)
    assert pth.stat().st_size == size  # only the hash can tell
    loaded = load_preferred(str(pth))
    assert loaded.path == str(pth) and _same(loaded.state_dict, sd)
    (warning,) = loaded.warnings
    assert "pose_net.pth has changed since the twin was converted from it (same size, different content)" in warning
    _assert_advice(warning, _twin(pth), pth)


def test_touched_or_copied_pth_keeps_its_twin(pth):
    # a copy or restore changes only the modification time; the content hash still matches
    twin = convert_to_safetensors(str(pth))
    os.utime(pth, ns=(pth.stat().st_atime_ns, pth.stat().st_mtime_ns + 10**9))
    loaded = load_preferred(str(pth))
    assert loaded.path == twin and loaded.warnings == ()


def test_twin_without_fingerprint_is_judged_by_modification_time(pth):
    twin = _twin(pth)
    save_file(load_state_dict(str(pth)), str(twin), metadata={"format": "pt"})  # an older `make convert`
    _make_older(pth)
    fresh = load_preferred(str(pth))
    assert fresh.path == str(twin) and fresh.warnings == ()
    _make_older(twin, seconds=1000)  # now the .pth is the newer of the two
    loaded = load_preferred(str(pth))
    assert loaded.path == str(pth)
    (warning,) = loaded.warnings
    assert "pose_net.pth is newer than the twin, and the twin (from an older `make convert`) does not record" in warning
    _assert_advice(warning, twin, pth)


def test_twin_without_a_pth_is_loaded(pth):
    twin = convert_to_safetensors(str(pth))
    pth.unlink()
    for picked in (twin, str(pth)):   # picked directly, or by the name of the .pth that is gone
        loaded = load_preferred(picked)
        assert loaded.path == twin and loaded.warnings == ()


def test_stale_twin_picked_directly_is_loaded_with_a_warning(pth):
    twin = convert_to_safetensors(str(pth))
    _resave_with_other_values(pth)
    loaded = load_preferred(twin)
    assert loaded.path == twin
    (warning,) = loaded.warnings
    assert "Loading it anyway, as it was selected; select pose_net.pth to load the original." in warning
    _assert_advice(warning, twin, pth)


def test_corrupt_twin_picked_directly_names_the_pth_not_a_download(pth):
    _twin(pth).write_bytes(GARBAGE)
    with pytest.raises(CheckpointError) as err:
        load_preferred(str(_twin(pth)))
    text = str(err.value)
    assert text.startswith(f"Could not read {_twin(pth)} as safetensors (")
    assert f"It is the converted twin of {pth}: select pose_net.pth instead." in text
    _assert_advice(text, _twin(pth), pth)


def test_corrupt_safetensors_without_a_pth_says_download_again(tmp_path):
    path = tmp_path / "lonely.safetensors"
    path.write_bytes(GARBAGE)
    with pytest.raises(CheckpointError, match=r"lonely.safetensors as safetensors .*damaged or incomplete\. Download it again\."):
        load_state_dict(str(path))


class HarmlessCode:
    """Unpickles by calling os.getcwd: code execution that does nothing, which weights_only refuses."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_code_pickle_refusal_never_suggests_weights_only_false(tmp_path):
    path = tmp_path / "svd_code.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1), "x": HarmlessCode()}}, path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(str(path))
    assert str(err.value).startswith(f"Refused to load {path}: it needs code execution to unpickle "
                                     "(it references posix.getcwd).")
    assert "weights_only" not in str(err.value)
    # ComfyUI logs a node error's chained causes, and torch's own text advises weights_only=False
    assert err.value.__cause__ is None and err.value.__suppress_context__


# --- through the real server ------------------------------------------------------------------------
# Loader-only prompts (each output goes to core's PreviewAny): no sampling, and svd_xt.safetensors
# stays in the prompt so ComfyUI keeps it cached instead of reading 1.9 GB again.


def _fresh(stem):
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def _log_since(server, mark):
    return server.log()[mark:]


def _node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def _loaders_prompt(unet_name="unet.pth", **extra_nodes):
    return {
        "2": _node("IDA_LoadSVDBase", ckpt_name="svd_xt.safetensors"),
        "3": _node("IDA_LoadAnimationUNet", unet_name=unet_name, weight_dtype="default"),
        "90": _node("PreviewAny", source=["2", 1]),
        "91": _node("PreviewAny", source=["3", 0]),
        **extra_nodes,
    }


def _with_svd_checkpoint(ckpt_name):
    # a second SVD loader beside the cached one; the new file is a combo choice without a restart
    return _loaders_prompt(**{"4": _node("IDA_LoadSVDBase", ckpt_name=ckpt_name),
                              "92": _node("PreviewAny", source=["4", 1])})


def test_server_corrupt_twin_loads_the_pth_and_logs_why(server, tiny_set):
    folder = server.base_dir / "models" / "stableanimator"
    stem = _fresh("twin_corrupt")
    pth, twin = folder / f"{stem}.pth", folder / f"{stem}.safetensors"
    shutil.copy(tiny_set["unet.pth"], pth)
    twin.write_bytes(GARBAGE)
    mark = len(server.log())
    try:
        result = server.client.run(_loaders_prompt(pth.name), timeout=300)
        assert result.status == "success", result.error
        log = _log_since(server, mark)
        assert f"Could not read {twin}, the .safetensors twin converted from {pth}" in log
        assert f'Loading {pth} instead. Re-run `make convert FILES="{pth}"` to rewrite the twin, or delete it.' in log
    finally:
        pth.unlink(missing_ok=True)
        twin.unlink(missing_ok=True)


def test_server_stale_twin_loads_the_newer_pth(server, tiny_set, tmp_path):
    folder = server.base_dir / "models" / "stableanimator"
    stem = _fresh("twin_stale")
    pth, twin = folder / f"{stem}.pth", folder / f"{stem}.safetensors"
    # The twin records another source (the PoseNet): loading it in the UNet slot would fail, so a
    # successful run shows that the .pth beside it was loaded instead.
    other = tmp_path / f"{stem}.pth"
    shutil.copy(tiny_set["pose_net.pth"], other)
    convert_to_safetensors(str(other), str(twin))
    shutil.copy(tiny_set["unet.pth"], pth)
    mark = len(server.log())
    try:
        result = server.client.run(_loaders_prompt(pth.name), timeout=300)
        assert result.status == "success", result.error
        log = _log_since(server, mark)
        assert f"{twin} is out of date: {pth.name} is now {pth.stat().st_size:,} bytes" in log
        assert f'Loading {pth} instead. Re-run `make convert FILES="{pth}"`' in log
    finally:
        pth.unlink(missing_ok=True)
        twin.unlink(missing_ok=True)


def test_server_svd_loader_refuses_a_code_pickle_in_the_packs_words(server):
    path = server.base_dir / "models" / "checkpoints" / f"{_fresh('svd_code')}.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1), "x": HarmlessCode()}}, path)
    mark = len(server.log())
    try:
        result = server.client.run(_with_svd_checkpoint(path.name), timeout=300)
        assert result.status == "error" and result.error["node_id"] == "4", result.error
        message = result.error["exception_message"]
        assert message.startswith(f"Refused to load {path}: it needs code execution to unpickle "
                                  "(it references posix.getcwd).")
        assert "Only plain tensor state dicts are loaded" in message
        # nor in the log, where ComfyUI prints the traceback with any chained cause (torch's advice)
        for text in (message, _log_since(server, mark)):
            assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    finally:
        path.unlink(missing_ok=True)
    # the server stays healthy: the next valid prompt loads and runs (a UNet not loaded so far)
    assert server.client.run(_loaders_prompt("unet_from_yaml.pth"), timeout=300).status == "success"


def test_server_svd_loader_names_a_damaged_safetensors(server):
    path = server.base_dir / "models" / "checkpoints" / f"{_fresh('svd_damaged')}.safetensors"
    path.write_bytes(GARBAGE)
    try:
        result = server.client.run(_with_svd_checkpoint(path.name), timeout=300)
        assert result.status == "error" and result.error["node_id"] == "4", result.error
        assert result.error["exception_message"].startswith(
            f"Could not read {path} as safetensors (Error while deserializing header: header too large). "
            "The file is damaged or incomplete. Download it again.")
    finally:
        path.unlink(missing_ok=True)


def test_server_svd_loader_hands_a_safe_pickle_to_comfyui_detection(server):
    # read once by the pack's weights-only loader, then judged by ComfyUI's model detection
    path = server.base_dir / "models" / "checkpoints" / f"{_fresh('svd_plain')}.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    try:
        result = server.client.run(_with_svd_checkpoint(path.name), timeout=300)
        assert result.status == "error" and result.error["node_id"] == "4", result.error
        assert result.error["exception_message"].startswith(
            f"{path} is not an SVD img2vid checkpoint with a VAE and CLIP image encoder.")
    finally:
        path.unlink(missing_ok=True)
