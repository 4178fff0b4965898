"""Write the shipped driving pose: a short wave-and-sway dance as POSE_KEYPOINT JSON, drawn with the
pack's own parametric body model (models/body2d.py), so a new user has a driving pose to run at once.

  python tools/make_sample_pose.py            # writes models/data/poses/ida_sample_dance.json
  python tools/make_sample_pose.py --check    # exits 1 when the shipped file differs from what it writes

Deterministic: fixed proportions and closed-form joint angles, no random numbers, so the file is the
same on every machine. 32 frames loop seamlessly (about 4 s at 8 fps) on a 512x512 canvas; the figure
is front-facing, body joints only (the body model has no face or hands).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack_import import pack_module  # noqa: E402

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "data" / "poses" / "ida_sample_dance.json"
FRAMES, CANVAS = 32, 512
HEIGHT, PELVIS = 380.0, (256.0, 300.0)   # body height and resting pelvis, in canvas pixels

logger = logging.getLogger("make_sample_pose")


def _pack():
    return pack_module("models.body2d"), pack_module("models.keypoints")


def dance_angles(frames: int = FRAMES) -> dict[str, np.ndarray]:
    """Joint angles ``[1, F]`` (radians, body2d's convention): the right hand waves overhead four times
    per loop while the body sways once; every track is periodic in ``frames`` so the clip loops."""
    t = 2 * np.pi * np.arange(frames)[None] / frames
    sway = np.sin(t)
    return dict(
        lean=0.06 * sway, head=-0.08 * sway,
        r_shoulder=-2.45 + 0.12 * sway, r_elbow=-0.35 + 0.45 * np.sin(4 * t),
        l_shoulder=0.45 - 0.3 * sway, l_elbow=0.35 + 0.15 * np.sin(2 * t),
        r_hip=-0.1 + 0.06 * sway, l_hip=0.1 + 0.06 * sway,
        r_knee=0.08 * (1 + np.sin(2 * t)), l_knee=-0.08 * (1 - np.sin(2 * t)),
    )


def sample_pose() -> list[dict]:
    body2d, keypoints = _pack()
    prop = {k: np.array([v]) for k, v in body2d.PROPORTIONS.items()}
    ang = dance_angles()
    t = 2 * np.pi * np.arange(FRAMES) / FRAMES
    xy = body2d.pose_keypoints(prop, ang, np.array([HEIGHT]), np.array([PELVIS]))[0]      # [F, 18, 2]
    # the hips sway sideways with the lean and bob on every beat, so the dance reads as one body moving
    xy = xy + np.stack([14.0 * np.sin(t), 5.0 * np.abs(np.sin(2 * t))], -1)[:, None, :]
    assert xy.min() > 8 and xy.max() < CANVAS - 8, "the figure must stay inside the canvas"
    score = np.ones(body2d.NUM_JOINTS)
    frames = [keypoints.PoseFrame(CANVAS, CANVAS, [keypoints.Person(body=f / CANVAS, body_score=score.copy())])
              for f in xy]
    value = keypoints.to_pose_keypoint(frames)
    for fr in value:   # tenth-of-a-pixel precision keeps the file small and readable
        for p in fr["people"]:
            p["pose_keypoints_2d"] = [round(v, 1) for v in p["pose_keypoints_2d"]]
    return value


def dumps(value) -> str:
    # one frame per line: small, and a diff shows which frames changed
    return "[\n" + ",\n".join(json.dumps(fr, separators=(",", ":")) for fr in value) + "\n]\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = dumps(sample_pose())
    if args.check:
        same = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        logger.info("%s is %s", OUT.relative_to(ROOT), "up to date" if same else "stale: run tools/make_sample_pose.py")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    logger.info("wrote %s (%d frames, %d bytes)", OUT.relative_to(ROOT), FRAMES, len(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
