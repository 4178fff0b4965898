"""`make convert FILES="a.pth b.pth"`: write each official .pth as .safetensors beside it.

The loaders prefer the .safetensors twin: it needs no unpickling and maps lazily. The twin records the
.pth's size, modification time and a hash of its first and last MiB; once the .pth is replaced, the
loaders warn and load the .pth instead until the twin is converted again (run this once more).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint_module():
    # load models/checkpoint.py by path: the pack folder need not be an importable name
    spec = importlib.util.spec_from_file_location("ida_checkpoint", ROOT / "models" / "checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # registered before it runs, as Python's own imports do
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help=".pth files (unet.pth, pose_net.pth, face_encoder.pth, glintr100_torch.pth)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ckpt = _checkpoint_module()
    failed = 0
    for f in args.files:
        try:
            ckpt.convert_to_safetensors(f)
        except ckpt.CheckpointError as exc:
            logging.error("%s", exc)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
