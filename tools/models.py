"""`make models` / python tools/models.py: which model files each node needs, where they go, their sizes
and licences; what is present; and downloads from the official Hugging Face repositories.

  python tools/models.py list              # table: file, folder, size, licence, nodes, status
  python tools/models.py check             # exit 1 if a file is missing or has the wrong size
  python tools/models.py download --all    # or: download unet.pth pose_net.pth ... (or a folder: insightface)

--comfyui DIR picks the ComfyUI folder (default: $COMFYUI_DIR or .host/ComfyUI). Downloads resume from
a .part file, are checked against the expected size where it is known, and come from
$HF_ENDPOINT (default https://huggingface.co).
"""
from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _catalog():
    """The pack's model list (models/catalog.py), read by path: importing the package would need torch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ida_catalog", ROOT / "models" / "catalog.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


_CAT = _catalog()
ModelFile, MODELS = _CAT.ModelFile, _CAT.MODELS


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def status(m: ModelFile, models_dir: Path) -> str:
    p = models_dir / m.folder / m.name
    twin = p.with_suffix(".safetensors") if p.suffix == ".pth" else None
    if not p.is_file():
        return "present (.safetensors twin)" if twin and twin.is_file() else "missing"
    if m.size is not None and p.stat().st_size != m.size:
        return f"WRONG SIZE ({p.stat().st_size:,} bytes, expected {m.size:,}): download again"
    return "present" if m.size is None else "present, size ok"


def cmd_list(models_dir: Path) -> int:
    print(f"Models folder: {models_dir}\n")
    print("| file | put it in | size | licence | used by | status |\n|---|---|---|---|---|---|")
    for m in MODELS:
        print(f"| {m.name} | models/{m.folder}/ | {human(m.size)} | {m.licence} | {', '.join(m.nodes)} | {status(m, models_dir)} |")
    return 0


def cmd_check(models_dir: Path) -> int:
    bad = [(m, s) for m in MODELS if not (s := status(m, models_dir)).startswith("present")]
    for m, s in bad:
        print(f"{m.folder}/{m.name}: {s}")
    print("all model files present" if not bad else f"{len(bad)} file(s) missing or wrong")
    return 1 if bad else 0


def download(m: ModelFile, models_dir: Path, endpoint: str, chunk: int = 1 << 20) -> Path:
    """Fetch ``m`` into its folder, resuming a previous ``.part`` download with an HTTP Range request."""
    dest = models_dir / m.folder / m.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    url = m.url(endpoint)
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    token = os.environ.get("HF_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and m.size is not None and have == m.size:   # the .part is already complete
            part.replace(dest)
            return dest
        raise
    with resp:
        mode = "ab" if resp.status == 206 else "wb"     # 200: the server ignored the range, start over
        total = int(resp.headers.get("Content-Length", 0)) + (have if mode == "ab" else 0)
        done = have if mode == "ab" else 0
        with open(part, mode) as fh:
            while True:
                block = resp.read(chunk)
                if not block:
                    break
                fh.write(block)
                done += len(block)
                if total:
                    sys.stderr.write(f"\r{m.name}: {human(done)} / {human(total)}")
    sys.stderr.write("\n")
    size = part.stat().st_size
    if m.size is not None and size != m.size:
        raise OSError(f"{m.name}: downloaded {size:,} bytes but the official file has {m.size:,}; run download again.")
    part.replace(dest)
    return dest


def cmd_download(models_dir: Path, names: list[str], all_: bool, endpoint: str) -> int:
    # a folder name (insightface, dwpose, ...) stands for every file that goes there
    wanted = MODELS if all_ else [m for m in MODELS if m.name in names or Path(m.name).name in names or m.folder in names]
    unknown = set(names) - {m.name for m in MODELS} - {Path(m.name).name for m in MODELS} - {m.folder for m in MODELS}
    if unknown or not wanted:
        print(f"Unknown model file(s): {sorted(unknown) or names}. `list` shows the names.")
        return 2
    failed = 0
    for m in wanted:
        if status(m, models_dir).startswith("present"):
            print(f"{m.name}: already present")
            continue
        try:
            print(f"{m.name}: {download(m, models_dir, endpoint)}")
        except (OSError, urllib.error.URLError) as exc:
            print(f"{m.name}: download failed ({exc}); run the same command again to resume.")
            failed += 1
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR") or str(ROOT / ".host" / "ComfyUI"))
    ap.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    sub.add_parser("check")
    d = sub.add_parser("download")
    d.add_argument("names", nargs="*")
    d.add_argument("--all", action="store_true")
    args = ap.parse_args(argv)
    models_dir = Path(args.comfyui) / "models"
    if args.cmd == "list":
        return cmd_list(models_dir)
    if args.cmd == "check":
        return cmd_check(models_dir)
    return cmd_download(models_dir, args.names, args.all, args.endpoint)


if __name__ == "__main__":
    sys.exit(main())
