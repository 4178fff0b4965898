"""`make demo`: start ComfyUI headless on loopback, queue the full animation workflow
(workflows/api/animate_512x512.json) through /prompt, follow /ws, and print where the video is.

With every official model file in ComfyUI/models it animates your reference image with your driving
video (REF=... DRIVING=...). Otherwise it runs the same graph on tiny random weights (and a drawn
reference and driving clip) and says so loudly: the output is noise, but it went through every stage
in a real ComfyUI server.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))

from ida_server import ComfyServer  # noqa: E402

WORKFLOW = ROOT / "workflows" / "api" / "animate_512x512.json"


def missing_real_files(models: Path) -> list[str]:
    def has(folder, *stems):
        return any((models / folder / f"{s}{ext}").is_file() for s in stems for ext in (".safetensors", ".pth"))

    need = []
    for stem in ("unet", "pose_net", "face_encoder"):
        if not has("stableanimator", stem):
            need.append(f"stableanimator/{stem}.pth")
    if not [p for p in (models / "checkpoints").glob("svd_xt*.safetensors") if "decoder" not in p.name] if (models / "checkpoints").is_dir() else True:
        need.append("checkpoints/svd_xt.safetensors")
    for f in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
        if not (models / "dwpose" / f).is_file():
            need.append(f"dwpose/{f}")
    if not list((models / "insightface" / "models" / "antelopev2").glob("*.onnx")):
        need.append("insightface/models/antelopev2/*.onnx")
    return need


def banner(lines: list[str]) -> None:
    width = max(len(l) for l in lines) + 4
    print("\n" + "#" * width)
    for l in lines:
        print(f"# {l.ljust(width - 4)} #")
    print("#" * width + "\n", flush=True)


def prepare_random_weights(base: Path) -> None:
    """Tiny official-layout checkpoints and ONNX stand-ins with the real I/O contracts."""
    from ida_face_models import export_antelopev2, face_image
    from ida_factory import cached_svd_xt, driving_frames, write_stableanimator_set, write_video
    from ida_onnx_models import export
    from PIL import Image

    models = base / "models"
    files = write_stableanimator_set(models / "stableanimator")
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    link = models / "checkpoints" / "svd_xt.safetensors"
    if not link.exists():
        link.symlink_to(cached_svd_xt(ROOT / ".cache" / "test-weights"))
    export(models / "dwpose", planted=True)
    import importlib.util

    spec = importlib.util.spec_from_file_location("identity_animator", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("identity_animator", pack)
    spec.loader.exec_module(pack)
    from identity_animator.models.checkpoint import load_state_dict
    from identity_animator.models.iresnet import IResNet

    export_antelopev2(models / "insightface", IResNet.from_state_dict(load_state_dict(str(files["glintr100_torch.pth"]))))
    (base / "input").mkdir(parents=True, exist_ok=True)
    Image.fromarray(face_image()).save(base / "input" / "reference.png")
    write_video(base / "input" / "driving.mp4", driving_frames(20))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=os.environ.get("REF"), help="reference image (real weights)")
    ap.add_argument("--driving", default=os.environ.get("DRIVING"), help="driving video (real weights)")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    comfy = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".host" / "ComfyUI")
    prompt = json.loads(WORKFLOW.read_text())
    missing = missing_real_files(comfy / "models")
    if not missing:
        if not (args.reference and args.driving):
            print("All official models are in place. Give the inputs: make demo REF=person.png DRIVING=dance.mp4")
            return 2
        base = comfy
        (base / "input").mkdir(exist_ok=True)
        shutil.copy(args.reference, base / "input" / "reference.png")
        shutil.copy(args.driving, base / "input" / "driving.mp4")
        banner([f"Official weights found in {comfy / 'models'}: animating {args.reference} with {args.driving}."])
    else:
        base = ROOT / ".host" / "demo-random-weights"
        banner([
            "NO OFFICIAL WEIGHTS FOUND - THIS DEMO RUNS ON TINY RANDOM WEIGHTS.",
            "The video is noise. It proves the full graph runs through a real ComfyUI server:",
            "DWPose -> Pose Align -> skeletons -> face -> StableAnimator sampler (2 windows) -> video.",
            f"Missing in {comfy / 'models'}: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}",
            "See the README's Models section for where each file goes.",
        ])
        prepare_random_weights(base)
        fit = next(k for k, n in prompt.items() if n["class_type"] == "IDA_FitReference")
        prompt[fit]["inputs"].update(width=64, height=64)     # small enough for a CPU; the whole graph follows it
        prompt["18"]["inputs"]["steps"] = 3
    with ComfyServer(comfy, base) as server:
        print(f"ComfyUI is serving on {server.url} (log: {server.log_path})", flush=True)
        start = time.monotonic()
        result = server.client.run(prompt, timeout=args.timeout)
        if result.status != "success":
            print(f"The prompt ended with {result.status}: {json.dumps(result.error, indent=1)[:3000]}")
            print(server.log_tail())
            return 1
        print(f"animation finished in {time.monotonic() - start:.1f} s")
    files = [base / "output" / i.get("subfolder", "") / i["filename"]
             for out in result.outputs.values() for i in out.get("images", [])]
    for f in files:
        print(f"output: {f}")
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(main())
