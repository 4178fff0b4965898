"""Measure how crop decoding changes the face-refinement gradient versus full-frame decoding.

Uses the random-weight SVD-xt VAE decoder (real architecture) and the tiny random ArcFace from the
test factory, on frames of --size pixels with one face box per frame. For several margins it reports
the identity loss and the cosine similarity / relative difference of d(loss)/d(x0) against
full-frame decoding. Writes a markdown table to stdout.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--box", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import conftest  # noqa: F401  (pack alias and ComfyUI on the path, CPU)
    import torch

    import comfy.latent_formats
    import comfy.sd
    import comfy.utils
    from ida_factory import cached_svd_xt, tiny_iresnet_state_dict
    from identity_animator.models.face_refine import FaceRefiner, RefineSchedule, face_crops
    from identity_animator.models.iresnet import IResNet
    from identity_animator.nodes.refine import GradDecoder

    vae = comfy.sd.load_state_dict_guess_config(comfy.utils.load_torch_file(str(cached_svd_xt(ROOT / ".cache" / "test-weights"))),
                                                output_vae=True, output_clip=False, output_clipvision=False, output_model=False)[2]
    dec = GradDecoder(vae, comfy.latent_formats.SD15().process_out, torch.device("cpu"), torch.float32)
    arc = IResNet.from_state_dict(tiny_iresnet_state_dict())
    g = torch.Generator().manual_seed(args.seed)
    lat = args.size // 8
    x0 = torch.randn(args.frames, 4, lat, lat, generator=g) * 0.18215
    target = torch.randn(1, 4, lat, lat, generator=g) * 0.18215
    boxes = []
    for k in range(args.frames):
        x = int(torch.randint(0, args.size - args.box, (1,), generator=g))
        y = int(torch.randint(0, args.size - args.box, (1,), generator=g))
        boxes.append((x, y, x + args.box, y + args.box))
    with torch.no_grad():
        ref = arc(face_crops(dec(target).clamp(-1, 1), boxes[:1], [(0, 0)]))

    def grad(crop: bool, margin: int):
        r = FaceRefiner(dec, arc, ref, boxes, RefineSchedule(), margin=margin, chunk=args.frames, crop=crop)
        z = x0.clone().requires_grad_(True)
        t = time.perf_counter()
        loss = r.loss_and_grad(z)
        return loss, z.grad.clone(), time.perf_counter() - t

    full_loss, full_grad, full_t = grad(False, 0)
    print(f"{args.frames} frames of {args.size}x{args.size}, face boxes {args.box}x{args.box}, random SVD-xt VAE decoder, "
          f"tiny random ArcFace, seed {args.seed}\n")
    print("| decode | margin (px) | identity loss | grad cosine vs full | grad rel. diff | time (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| full frame | - | {full_loss:.5f} | 1.000 | 0.000 | {full_t:.2f} |")
    for margin in (0, 8, 16, 32, 64):
        loss, gr, t = grad(True, margin)
        cos = torch.nn.functional.cosine_similarity(gr.flatten(), full_grad.flatten(), dim=0).item()
        rel = ((gr - full_grad).norm() / full_grad.norm()).item()
        print(f"| crop | {margin} | {loss:.5f} | {cos:.3f} | {rel:.3f} | {t:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
