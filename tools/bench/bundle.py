"""`make bench-bundle`: everything the GPU benchmark needs that the lent GPU machine lacks, in one
ignored folder that travels with the checkout (``carry``), at most 60 MiB.

The GPU machine has Python 3.12, CUDA torch and the packages in ``device_packages.txt``, but no ComfyUI
and no network. The bundle holds:

- ``wheels/``: the packages in ``requirements.txt``, built for the target Python (3.12 by default);
- ``comfyui.zip``: the Python source of the ComfyUI the pack is tested on (0.3.75 in ``.host``), which
  the pack and the benchmark import; no model data, no frontend;
- ``official_checkpoint_keys.json``: the key and shape manifest of the official checkpoints, from which
  real-size random weights are generated on the GPU machine (weights never travel);
- ``MANIFEST.json``: every file with its size and SHA-256, the ComfyUI version and the target Python.

Wheels are downloaded once into ``.cache/bench-wheels/cpXY`` (a build step, like ``make setup``);
``--offline`` builds from that cache alone and fails, naming the missing wheel, when it is incomplete.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_OUT = ROOT / ".bench-bundle"
DEFAULT_COMFY = ROOT / ".host" / "ComfyUI"
WHEEL_CACHE = ROOT / ".cache" / "bench-wheels"
KEYS = ROOT / "tests" / "data" / "official_checkpoint_keys.json"
LIMIT_MIB = 60
# the parts of ComfyUI a pack and a script importing it load; comfy_extras, the frontend, the
# tokenizer and model data are left behind
COMFY_PACKAGES = ("comfy", "comfy_api", "comfy_execution", "comfy_config", "utils", "app", "api_server", "middleware")
# manylinux tags pip matches exactly (the device notes' list); the GPU machine is x86-64
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


class BundleError(SystemExit):
    """A build that cannot finish: the message says what to do."""


def requirements(path: Path = HERE / "requirements.txt") -> list[str]:
    """``name==version`` pins, comments dropped."""
    pins = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [p for p in pins if p]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def python_tag(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"cp{major}{minor}"


def cached_wheel(folder: Path, pin: str) -> Path | None:
    """The wheel for ``name==version`` in ``folder``, if one was downloaded."""
    name, version = pin.split("==")
    for wheel in folder.glob("*.whl"):
        parts = wheel.name.split("-")
        if normalise(parts[0]) == normalise(name) and parts[1] == version:
            return wheel
    return None


def download_wheel(pin: str, python: str, folder: Path) -> Path:
    """``pip download`` of one pinned wheel for ``python`` on x86-64 Linux, without its dependencies
    (the bundle names every one it needs)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python, "--implementation", "cp", "-d", str(folder), pin]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = cached_wheel(folder, pin)
    if done.returncode != 0 or wheel is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BundleError(f"pip could not download {pin} for Python {python}: {' / '.join(tail)}")
    return wheel


def wheels(python: str, offline: bool, cache: Path = WHEEL_CACHE) -> list[Path]:
    """One wheel per pin, from the cache, downloading what is missing unless ``offline``."""
    folder = cache / python_tag(python)
    found = []
    for pin in requirements():
        wheel = cached_wheel(folder, pin)
        if wheel is None and offline:
            raise BundleError(f"{pin} for Python {python} is not in {folder}: run `make bench-bundle` once with "
                              "network (or `python tools/bench/bundle.py --fetch-only`) to download it.")
        found.append(wheel or download_wheel(pin, python, folder))
    return found


def comfy_version(comfy: Path) -> str:
    text = (comfy / "comfyui_version.py").read_text() if (comfy / "comfyui_version.py").exists() else ""
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return m.group(1) if m else "unknown"


def comfy_sources(comfy: Path) -> list[Path]:
    """ComfyUI's Python files: the top-level modules and the packages above, relative to ``comfy``."""
    if not (comfy / "comfy" / "model_management.py").exists():
        raise BundleError(f"{comfy} is not a ComfyUI checkout: run `make setup` (it builds .host/ComfyUI) or pass "
                          "--comfyui /path/to/ComfyUI.")
    files = [p for p in comfy.glob("*.py")]
    for package in COMFY_PACKAGES:
        files += [p for p in (comfy / package).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(p.relative_to(comfy) for p in files)


def write_comfy_zip(comfy: Path, dest: Path) -> int:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        files = comfy_sources(comfy)
        for rel in files:
            zf.write(comfy / rel, rel.as_posix())
    return len(files)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2 ** 20


def build(out: Path, comfy: Path, python: str, offline: bool, limit_mib: float = LIMIT_MIB) -> dict:
    """Builds the bundle in ``out`` (replacing it) and returns its manifest; fails over ``limit_mib``."""
    found = wheels(python, offline)
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    for wheel in found:
        shutil.copy2(wheel, out / "wheels" / wheel.name)
    n_sources = write_comfy_zip(comfy, out / "comfyui.zip")
    shutil.copy2(KEYS, out / KEYS.name)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {
        "target_python": python,
        "comfyui_version": comfy_version(comfy),
        "comfyui_files": n_sources,
        "requirements": requirements(),
        "files": {p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = folder_mib(out)
    manifest["mib"] = round(size, 2)
    if size > limit_mib:
        raise BundleError(f"the bundle in {out} is {size:.1f} MiB, over the {limit_mib} MiB a GPU run can carry: "
                          "drop a wheel from tools/bench/requirements.txt or a package from COMFY_PACKAGES.")
    return manifest


def verify(out: Path) -> list[str]:
    """Problems with a built bundle (missing or changed files), empty when it is intact."""
    manifest = json.loads((out / "MANIFEST.json").read_text())
    problems = []
    for rel, info in manifest["files"].items():
        p = out / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != info["bytes"] or sha256(p) != info["sha256"]:
            problems.append(f"{rel} has changed")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the bundle folder (default .bench-bundle)")
    ap.add_argument("--comfyui", type=Path, default=DEFAULT_COMFY, help="the ComfyUI whose source travels")
    ap.add_argument("--python", default="3.12", help="the Python the wheels are for: the GPU machine's is 3.12; "
                    "'local' means this interpreter's")
    ap.add_argument("--offline", action="store_true", help="use downloaded wheels only")
    ap.add_argument("--fetch-only", action="store_true", help="download the wheels into the cache and stop")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = ap.parse_args(argv)
    python = f"{sys.version_info.major}.{sys.version_info.minor}" if args.python == "local" else args.python
    if args.fetch_only:
        for wheel in wheels(python, offline=False):
            print(wheel)
        return 0
    manifest = build(args.out, args.comfyui, python, args.offline, args.limit_mib)
    print(f"bench bundle: {args.out} ({manifest['mib']} MiB of {args.limit_mib:g}; ComfyUI {manifest['comfyui_version']}, "
          f"{manifest['comfyui_files']} source files; {len(manifest['requirements'])} wheels for Python {python})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
