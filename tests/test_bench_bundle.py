"""The GPU benchmark's bundle cannot rot: it builds from the wheel cache that `make setup` fills, fits
the 60 MiB a GPU run can carry, and the benchmark runs from it alone, at tiny sizes on the CPU, in a
fresh environment that has only the GPU machine's packages (ida_device_standin), through the same
script the GPU machine runs (tools/bench/run_on_device.sh)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COMFY_DIR, ROOT
from ida_device_standin import bundle_names, make_standin_python


def _bench_module(name: str):
    """tools/bench/<name>.py, imported by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"ida_bench_{name}", ROOT / "tools" / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _bundle_module():
    return _bench_module("bundle")


def test_the_device_bundle_fits_what_a_gpu_run_carries(tmp_path):
    bundle = _bundle_module()
    manifest = bundle.build(tmp_path / "bundle", COMFY_DIR, "3.12", offline=True)
    assert manifest["mib"] <= bundle.LIMIT_MIB
    assert manifest["comfyui_version"] == "0.3.75" or COMFY_DIR != ROOT / ".host" / "ComfyUI"
    wheels = {n.split("/")[1].split("-")[0].lower().replace("_", "-") for n in manifest["files"] if n.startswith("wheels/")}
    assert wheels == bundle_names()
    assert any(n.startswith("wheels/kornia_rs-") and "cp312" in n for n in manifest["files"])
    assert bundle.verify(tmp_path / "bundle") == []
    (tmp_path / "bundle" / "official_checkpoint_keys.json").write_text("{}")
    assert bundle.verify(tmp_path / "bundle") == ["official_checkpoint_keys.json has changed"]


def test_an_oversized_bundle_is_refused_with_what_to_do(tmp_path):
    bundle = _bundle_module()
    with pytest.raises(SystemExit, match="over the 1 MiB a GPU run can carry"):
        bundle.build(tmp_path / "bundle", COMFY_DIR, "3.12", offline=True, limit_mib=1)


def test_the_benchmark_runs_from_the_bundle_alone(tmp_path):
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    _bundle_module().build(tmp_path / "bundle", COMFY_DIR, local, offline=True)
    python, standins = make_standin_python(tmp_path)
    assert "torch" in standins and not {"diffusers", "kornia", "av", "torchsde"} & {s.lower() for s in standins}
    site, out = tmp_path / "site", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "COMFYUI_DIR")}
    env.update(PYTHON=str(python), BENCH_BUNDLE=str(tmp_path / "bundle"), BENCH_SITE=str(site), OUT=str(out),
               PATH=f"{python.parent}:/usr/bin:/bin", TMPDIR=str(tmp_path))
    done = subprocess.run(["bash", str(ROOT / "tools" / "bench" / "run_on_device.sh"), "--tiny", "--only",
                           "tiny 16f 64x64 HJB", "--budget", "800"], env=env, capture_output=True, text=True, timeout=880)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    (res,) = data["results"]
    assert res["status"] == "ok", res
    for part in ("pack", "baseline"):
        p = res[part]
        assert p["status"] == "ok", (part, p)
        assert p["seconds"] > 0 and p["peak_gib"] > 0 and p["tflop"] > 0, (part, p)
    assert res["baseline"]["refine_seconds"] > 0
    where = res["imported_from"]
    assert where["comfy"].startswith(str(tmp_path)), where             # the bundle's ComfyUI, unpacked
    for name in ("diffusers", "kornia", "av", "torchsde"):
        assert where[name].startswith(str(site)), (name, where)        # the bundle's wheels
    assert where["identity_animator"].startswith(str(ROOT)), where
    assert ".host" not in json.dumps(where)
    assert "| tiny 16f 64x64 HJB |" in (out / "benchmarks.md").read_text()


def test_the_channels_last_lever_leaves_temporal_convolutions_alone():
    # Module.to(memory_format=channels_last) refuses a model with 5-D weights, as the SVD UNet has
    import torch

    workload = _bench_module("workload")
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Conv3d(8, 8, (3, 1, 1)))
    with pytest.raises(RuntimeError):
        model.to(memory_format=torch.channels_last)
    workload.channels_last_(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last) and not model[0].weight.is_contiguous()
    assert model[1].weight.is_contiguous()
