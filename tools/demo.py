"""`make demo`: start ComfyUI headless on loopback, queue the example workflow through /prompt,
follow /ws, and print where the output is.

With the official weights in ComfyUI/models (stableanimator/unet.pth, checkpoints/svd_xt.safetensors)
it runs them; otherwise it runs the same graph on random weights and says so loudly.
It runs the longest chain of this pack's stages that exists today: the official StableAnimator UNet
loaded into ComfyUI's native SVD model, driven by ComfyUI's SVD image-to-video conditioning.
Pose, face and the StableAnimator sampler join the chain as their issues land.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))

from ida_server import ComfyServer  # noqa: E402

WORKFLOW = ROOT / "workflows" / "api" / "animation_unet_svd_preview.json"
REAL_FILES = {"stableanimator": ["unet"], "checkpoints": ["svd_xt"]}


def find_real_weights(models: Path) -> dict[str, str] | None:
    found = {}
    for stem in ("unet",):
        for ext in (".safetensors", ".pth"):
            if (models / "stableanimator" / f"{stem}{ext}").is_file():
                found[stem] = f"{stem}{ext}"
                break
    svd = sorted((models / "checkpoints").glob("svd_xt*.safetensors")) if (models / "checkpoints").is_dir() else []
    svd = [p for p in svd if "image_decoder" not in p.name]
    if svd:
        found["svd_xt"] = svd[0].name
    return found if len(found) == 2 else None


def banner(lines: list[str]) -> None:
    width = max(len(l) for l in lines) + 4
    print("\n" + "#" * width)
    for l in lines:
        print(f"# {l.ljust(width - 4)} #")
    print("#" * width + "\n", flush=True)


def reference_image(path: Path, size=(512, 512)) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (200, 210, 225))
    d = ImageDraw.Draw(img)
    w, h = size
    d.ellipse([w * 0.42, h * 0.08, w * 0.58, h * 0.26], fill=(224, 186, 160))  # head
    d.rectangle([w * 0.38, h * 0.27, w * 0.62, h * 0.6], fill=(60, 90, 160))     # torso
    d.rectangle([w * 0.4, h * 0.6, w * 0.48, h * 0.92], fill=(40, 40, 60))       # legs
    d.rectangle([w * 0.52, h * 0.6, w * 0.6, h * 0.92], fill=(40, 40, 60))
    img.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", help="reference image (default: a drawn placeholder figure)")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    comfy = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".host" / "ComfyUI")
    prompt = json.loads(WORKFLOW.read_text())
    real = find_real_weights(comfy / "models")
    if real:
        base = comfy
        prompt["3"]["inputs"]["unet_name"] = real["unet"]
        prompt["2"]["inputs"]["ckpt_name"] = real["svd_xt"]
        banner([f"Official weights found in {comfy / 'models'}: running them."])
    else:
        from ida_factory import cached_svd_xt, write_stableanimator_set

        base = ROOT / ".host" / "demo-random-weights"
        banner([
            "NO OFFICIAL WEIGHTS FOUND - THIS DEMO RUNS ON RANDOM WEIGHTS.",
            "The output is noise. It proves the graph runs end to end through a real ComfyUI server.",
            f"Put Animation/unet.pth in {comfy / 'models' / 'stableanimator'} and svd_xt.safetensors",
            f"in {comfy / 'models' / 'checkpoints'} to animate for real (see README, Models).",
        ])
        models = base / "models"
        write_stableanimator_set(models / "stableanimator")
        ckpts = models / "checkpoints"
        ckpts.mkdir(parents=True, exist_ok=True)
        svd = cached_svd_xt(ROOT / ".cache" / "test-weights")
        link = ckpts / "svd_xt.safetensors"
        if not link.exists():
            link.symlink_to(svd)
        # small enough for a CPU: 64x64, 4 frames, 3 steps
        prompt["4"]["inputs"].update(width=64, height=64, video_frames=4)
        prompt["6"]["inputs"]["steps"] = 3
    (base / "input").mkdir(parents=True, exist_ok=True)
    ref = base / "input" / "reference.png"
    if args.reference:
        shutil.copy(args.reference, ref)
    elif not ref.exists():
        reference_image(ref)

    with ComfyServer(comfy, base) as server:
        print(f"ComfyUI is serving on {server.url} (log: {server.log_path})", flush=True)
        result = server.client.run(prompt, timeout=args.timeout)
        if result.status != "success":
            print(f"The prompt ended with {result.status}: {json.dumps(result.error, indent=1)[:3000]}")
            print(server.log_tail())
            return 1
    files = [base / "output" / i.get("subfolder", "") / i["filename"]
             for out in result.outputs.values() for i in out.get("images", [])]
    for f in files:
        print(f"output: {f}")
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(main())
