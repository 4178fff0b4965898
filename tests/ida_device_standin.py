"""A clean Python environment that stands in for the lent GPU machine's: a fresh virtual environment
that sees, of this checkout's .venv, only the packages the GPU machine has (tools/bench/device_packages.txt)
and what those need, CPU torch standing in for its CUDA torch. Nothing of ComfyUI, the pack's own
dependencies or the bench bundle's packages is on its path, so a benchmark run in it proves that the
bundle alone supplies them."""
from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = ROOT / "tools" / "bench" / "device_packages.txt"
BUNDLE_REQUIREMENTS = ROOT / "tools" / "bench" / "requirements.txt"
# this checkout's CPU host registers two torchvision kernels at startup (tools/setup_host.sh); the
# device's CUDA torchvision needs no such hook
TORCHVISION_HOOK = "_ida_cpu_torchvision_hook"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_names() -> set[str]:
    text = "\n".join(line.split("#")[0] for line in DEVICE_PACKAGES.read_text().splitlines())
    return {_norm(n) for n in text.split()}


def bundle_names() -> set[str]:
    pins = [line.split("#")[0].strip() for line in BUNDLE_REQUIREMENTS.read_text().splitlines()]
    return {_norm(p.split("==")[0]) for p in pins if p}


def _requires(dist: md.Distribution) -> set[str]:
    """The names a distribution needs unconditionally (extras and other platforms' needs left out)."""
    out = set()
    for req in dist.requires or []:
        name, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        if marker.strip() and ("sys_platform == \"win32\"" in marker or "platform_system == \"Windows\"" in marker):
            continue
        out.add(_norm(re.split(r"[ <>=!~\[(;]", name.strip(), maxsplit=1)[0]))
    return out


def standin_distributions(site: Path) -> list[md.Distribution]:
    """The device's packages installed in ``site``, and everything they need, minus the bundle's."""
    installed = {_norm(d.metadata["Name"]): d for d in md.distributions(path=[str(site)])}
    excluded = bundle_names()
    todo, keep = [n for n in device_names() if n in installed], {}
    while todo:
        name = todo.pop()
        if name in keep or name in excluded or name not in installed:
            continue
        keep[name] = installed[name]
        todo += sorted(_requires(installed[name]))
    return list(keep.values())


def link_standins(site: Path, dest: Path) -> list[str]:
    """Symlinks in ``dest`` to the top-level modules and metadata of :func:`standin_distributions`."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for dist in standin_distributions(site):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            src = site / top
            if top.endswith(".pth") or top == "__pycache__" or not src.exists() or (dest / top).exists():
                continue
            (dest / top).symlink_to(src)
        names.append(dist.metadata["Name"])
    return sorted(names)


def make_standin_python(where: Path) -> tuple[Path, list[str]]:
    """A fresh venv in ``where/venv`` whose only packages are the stand-ins; returns its python and them."""
    site = Path(sysconfig.get_paths()["purelib"])
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(where / "venv")],
                   check=True)
    python = where / "venv" / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    names = link_standins(site, where / "device-site")
    (venv_site / "ida_device_standin.pth").write_text(str(where / "device-site") + "\n")
    hook = site / f"{TORCHVISION_HOOK}.py"
    if hook.exists():
        (venv_site / hook.name).write_text(hook.read_text())
        (venv_site / f"{TORCHVISION_HOOK}.pth").write_text(f"import {TORCHVISION_HOOK}\n")
    return python, names
