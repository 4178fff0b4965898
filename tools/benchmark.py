"""`make bench`: seconds per frame and peak memory of the Animation Sampler without and with HJB face
refinement, and refinement's share of the time.

On a CUDA GPU: real-size random weights (SVD-xt UNet with StableAnimator's ID adapter, PoseNet, the
SVD-xt VAE decoder, iresnet100) at 16 and 64 frames, 512x512 and 576x1024; the table, with the GPU's
name, is written to docs/benchmarks.md. On a CPU: the tiny test UNet (real VAE decoder and tiny
ArcFace) at small sizes, printed and written to the same file's CPU section. Each configuration runs
in its own process so peak memory is its own.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".host" / "ComfyUI")
DOC = ROOT / "docs" / "benchmarks.md"
GPU_CONFIGS = [(16, 512, 512), (64, 512, 512), (16, 576, 1024), (64, 576, 1024)]
CPU_CONFIGS = [(8, 64, 64), (16, 64, 64)]


def _setup(cpu: bool):
    sys.path.insert(0, str(COMFY))
    sys.path.insert(0, str(ROOT / "tests"))
    import utils.install_util  # noqa: F401
    from comfy.cli_args import args

    args.cpu = cpu
    spec = importlib.util.spec_from_file_location("identity_animator", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["identity_animator"] = mod
    spec.loader.exec_module(mod)


def _random_like(shapes: dict, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * (0.02 if len(s) > 1 else 0.1) + (1.0 if k.endswith("norm.weight") else 0.0)).to(dtype)
            for k, s in shapes.items()}


def _components(real: bool, dtype):
    """UNet (ComfyUI model), ID adapter, PoseNet patcher, VAE, ArcFace."""
    import torch

    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.utils
    from ida_factory import cached_svd_xt, tiny_iresnet_state_dict, tiny_pose_net_state_dict, tiny_unet_state_dict
    from identity_animator.models.id_adapter import IDAdapterWeights
    from identity_animator.models.iresnet import IResNet
    from identity_animator.models.pose_net import PoseNet
    from identity_animator.models.unet_convert import convert_stableanimator_unet
    from identity_animator.nodes.svd_model import build_svd_model

    if real:
        keys = json.loads((ROOT / "tests" / "data" / "official_checkpoint_keys.json").read_text())
        unet_sd = _random_like(keys["Animation/unet.pth"], torch.float16)
        pose_sd = _random_like(keys["Animation/pose_net.pth"], torch.float32, 1)
        arc = IResNet(**IResNet.config_from_state_dict({k: torch.empty(s) for k, s in keys["Animation/glintr100_torch.pth"].items()}))
    else:
        unet_sd, pose_sd = tiny_unet_state_dict(), tiny_pose_net_state_dict()
        arc = IResNet.from_state_dict(tiny_iresnet_state_dict())
    conv = convert_stableanimator_unet(unet_sd)
    model = build_svd_model(conv.unet, "fp16" if real else "fp32", "benchmark")
    id_adapter = IDAdapterWeights.from_converted(conv.id_adapter).to(torch.float16 if real else torch.float32)
    pose = comfy.model_patcher.ModelPatcher(PoseNet.from_state_dict(pose_sd), mm.get_torch_device(), mm.unet_offload_device())
    sd = comfy.utils.load_torch_file(str(cached_svd_xt(ROOT / ".cache" / "test-weights")))
    vae = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=False, output_clipvision=False, output_model=False)[2]
    return model, id_adapter, pose, vae, arc.eval()


def run_one(frames: int, width: int, height: int, refine: bool, steps: int, real: bool) -> dict:
    """One configuration, in this process; returns timings and peak memory."""
    import resource

    import torch

    _setup(cpu=not real)
    import comfy.model_management as mm
    from identity_animator.models.face import FaceConditioning, FaceResult
    from identity_animator.nodes.animation import ApplyStableAnimator
    from identity_animator.nodes.refine import FaceRefineSampler
    from identity_animator.nodes.sampling import AnimationSampler

    dtype = torch.float16 if real else torch.float32
    model, id_adapter, pose, vae, arc = _components(real, dtype)
    g = torch.Generator().manual_seed(0)
    face = FaceConditioning(torch.randn(1, 1, 1024, generator=g), torch.randn(1, 4, 1024, generator=g))
    poses = torch.rand(frames, height, width, 3, generator=g)
    (m,) = ApplyStableAnimator.execute(model, id_adapter, face, pose, poses, 1.0, 1.0, 0.0, 1.0).result
    adm = {"fps": 7, "motion_bucket_id": 127, "augmentation_level": 0.02}
    ref = torch.randn(1, 4, height // 8, width // 8, generator=g)
    pos = [[face.clip_embeds, {"concat_latent_image": ref, **adm}]]
    neg = [[torch.zeros_like(face.clip_embeds), {"concat_latent_image": torch.zeros_like(ref), **adm}]]
    latent = {"samples": torch.zeros(frames, 4, height // 8, width // 8)}
    sampler = None
    if refine:
        masks = torch.zeros(frames, height, width)
        fh, fw = height // 8, width // 8          # a face about an eighth of the frame, as in full-body shots
        masks[:, height // 6:height // 6 + fh, width // 2 - fw // 2:width // 2 + fw // 2] = 1
        box = torch.tensor([width / 2 - fw / 2, height / 6, width / 2 + fw / 2, height / 6 + fh]).numpy()
        ref_face = FaceResult(torch.zeros(512).numpy(), box, torch.zeros(5, 2).numpy(), 1.0, None, width, height)
        (sampler,) = FaceRefineSampler.execute(vae, arc, torch.rand(1, height, width, 3), ref_face, masks, True, "euler",
                                               0, round(steps * 20 / 25), 3, 0.1, 32, True, 4, 0.0, 0.0, 1000.0, 1.0).result
    if real:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    AnimationSampler.execute(m, pos, neg, latent, 1, steps, 3.0, 3.0, "official", 16, 4, False, False, sampler)
    if real:
        torch.cuda.synchronize()
    took = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if real else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return {"seconds": took, "seconds_per_frame": took / frames, "peak_gib": peak}


def _device_name(real: bool) -> str:
    if real:
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU only: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default 25 on GPU, 2 on CPU)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    import torch

    real = torch.cuda.is_available()
    steps = args.steps or (25 if real else 2)
    if args.one:
        f, w, h, refine = (int(v) for v in args.one.split(","))
        print("RESULT " + json.dumps(run_one(f, w, h, bool(refine), steps, real)), flush=True)
        return 0
    rows = []
    for frames, width, height in (GPU_CONFIGS if real else CPU_CONFIGS):
        res = {}
        for refine in (0, 1):
            out = subprocess.run([sys.executable, __file__, "--one", f"{frames},{width},{height},{refine}", "--steps", str(steps)],
                                 capture_output=True, text=True)
            m = re.search(r"^RESULT (.*)$", out.stdout, re.M)
            if not m:
                sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                raise SystemExit(f"configuration {frames}x{width}x{height} refine={refine} failed")
            res[refine] = json.loads(m.group(1))
        overhead = (res[1]["seconds"] - res[0]["seconds"]) / res[0]["seconds"]
        rows.append(f"| {frames} | {width}x{height} | {res[0]['seconds_per_frame']:.3f} | {res[0]['peak_gib']:.2f} | "
                    f"{res[1]['seconds_per_frame']:.3f} | {res[1]['peak_gib']:.2f} | {100 * overhead:.0f} % |")
        print(rows[-1], flush=True)
    mem = "peak GPU memory allocated (GiB)" if real else "peak process RSS (GiB)"
    table = "\n".join([
        f"Device: **{_device_name(real)}**. {steps} steps, official windows (16/4), refinement on steps 0-"
        f"{round(steps * 20 / 25)}, 3 Adam iterations, crop decode (margin 32 px, chunks of 4), "
        f"{'real-size random weights, fp16 UNet' if real else 'tiny random UNet, real-size random VAE decoder, tiny ArcFace'}. "
        f"Memory: {mem}. Measured {time.strftime('%Y-%m-%d')} with `make bench`.",
        "",
        "| frames | size | s/frame | memory | s/frame (refine) | memory (refine) | refinement overhead |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    print("\n" + table)
    if not args.no_write:
        _write_section("GPU" if real else "CPU", table)
    return 0


def _write_section(name: str, table: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nWritten by `make bench` (tools/benchmark.py).\n"
    start, end = f"<!-- {name} start -->", f"<!-- {name} end -->"
    block = f"{start}\n## {name}\n\n{table}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
