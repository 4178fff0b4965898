"""Train and evaluate the learnable SVD-guided pose aligner on the parametric 2-D body model.

  python tools/pose_align_learnable.py train --steps 3000 --out models/data/learnable_align_v1.safetensors
  python tools/pose_align_learnable.py eval  --ckpt models/data/learnable_align_v1.safetensors

Evaluation reports the mean keypoint distance (Dis, pixels of a 512x768 reference) to the true
alignment on held-out synthetic clips (a seed never used in training) for none / official /
similarity / learnable.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack_import import pack_module  # noqa: E402

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _pack():
    return pack_module("models.pose_align_learnable")


EVAL_SEED = 20261121  # held out: training draws from other seeds


def train(args) -> None:
    pal = _pack()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = pal.LearnableAligner()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    start = time.time()
    for step in range(1, args.steps + 1):
        loss = pal.training_step(model, pal.synthetic_clips(rng, args.batch))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pal.save(model.eval(), args.out, extra={"steps": args.steps, "batch": args.batch, "seed": args.seed})
    print(f"saved {args.out}")


def evaluate(args) -> dict:
    pal = _pack()
    model = pal.load(args.ckpt) if args.ckpt else None
    clips = pal.synthetic_clips(np.random.default_rng(EVAL_SEED), args.clips)
    res = pal.evaluate(model, clips)
    print(f"Dis (mean keypoint distance to the true alignment, px at 512x768), {args.clips} held-out clips:")
    print("| method | Dis |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.2f} |")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--out", default=str(ROOT / "models" / "data" / "learnable_align_v1.safetensors"))
    e = sub.add_parser("eval")
    e.add_argument("--ckpt", default=None)
    e.add_argument("--clips", type=int, default=2000)
    args = ap.parse_args(argv)
    train(args) if args.cmd == "train" else evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
