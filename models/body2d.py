"""A parametric 2-D body model in OpenPose-18 order, for training and evaluating pose alignment
when no keypoint dataset is at hand.

A front-facing kinematic stick figure: segment lengths are fractions of body height (rounded
Drillis-Contini anthropometric proportions) with per-person jitter; joint angles (torso lean, head
tilt, shoulder/elbow/hip/knee angles) follow smooth random trajectories over a clip. Image
coordinates: x right, y down; the person's right side is on the image's left.
"""
from __future__ import annotations

import numpy as np

# fraction of body height
PROPORTIONS = dict(torso=0.29, shoulder_half=0.13, hip_half=0.095, upper_arm=0.186, forearm=0.146,
                   thigh=0.245, shank=0.246, neck_to_nose=0.10, eye_dx=0.03, eye_dy=0.025, ear_dx=0.065, ear_dy=0.01)
NUM_JOINTS = 18


def _dir(angle: np.ndarray) -> np.ndarray:
    """Unit vector for an angle measured from straight down, positive towards image right."""
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1)


def random_proportions(rng: np.random.Generator, batch: int, jitter: float = 0.08) -> dict[str, np.ndarray]:
    return {k: v * (1.0 + jitter * rng.uniform(-1, 1, batch)) for k, v in PROPORTIONS.items()}


def random_angles(rng: np.random.Generator, batch: int, frames: int, motion: float = 1.0) -> dict[str, np.ndarray]:
    """Smooth joint-angle trajectories ``[B, F]`` (radians): a base pose plus slow sinusoids."""
    t = np.linspace(0, 1, frames)[None]

    def track(lo, hi, amp):
        base = rng.uniform(lo, hi, (batch, 1))
        freq, phase = rng.uniform(0.5, 2.0, (batch, 1)), rng.uniform(0, 2 * np.pi, (batch, 1))
        return base + motion * amp * np.sin(2 * np.pi * freq * t + phase)

    return dict(
        lean=track(-0.12, 0.12, 0.08), head=track(-0.2, 0.2, 0.15),
        r_shoulder=track(-2.2, 0.3, 0.8), l_shoulder=track(-0.3, 2.2, 0.8),
        r_elbow=track(-1.8, 0.2, 0.6), l_elbow=track(-0.2, 1.8, 0.6),
        r_hip=track(-0.5, 0.15, 0.3), l_hip=track(-0.15, 0.5, 0.3),
        r_knee=track(0.0, 0.9, 0.4), l_knee=track(-0.9, 0.0, 0.4),
    )


def pose_keypoints(prop: dict[str, np.ndarray], ang: dict[str, np.ndarray], height: np.ndarray,
                   pelvis: np.ndarray) -> np.ndarray:
    """Keypoints ``[B, F, 18, 2]`` in pixels; ``height [B]``, ``pelvis [B, 2]`` place the figure."""
    h = height[:, None, None]
    p = {k: v[:, None, None] * h for k, v in prop.items()}                 # [B,1,1] lengths in pixels
    lean = ang["lean"]                                                     # [B, F]
    up = -_dir(lean)                                                       # torso direction (upwards)
    side = np.stack([np.cos(lean), -np.sin(lean)], -1)                     # towards image right
    pelvis = pelvis[:, None, :]
    neck = pelvis + p["torso"] * up
    kp = np.zeros(lean.shape + (NUM_JOINTS, 2))
    kp[..., 1, :] = neck
    kp[..., 2, :] = neck - p["shoulder_half"] * side                       # right shoulder: image left
    kp[..., 5, :] = neck + p["shoulder_half"] * side
    kp[..., 8, :] = pelvis - p["hip_half"] * side
    kp[..., 11, :] = pelvis + p["hip_half"] * side
    for sh, el, wr, a_sh, a_el in ((2, 3, 4, "r_shoulder", "r_elbow"), (5, 6, 7, "l_shoulder", "l_elbow")):
        kp[..., el, :] = kp[..., sh, :] + p["upper_arm"] * _dir(lean + ang[a_sh])
        kp[..., wr, :] = kp[..., el, :] + p["forearm"] * _dir(lean + ang[a_sh] + ang[a_el])
    for hp, kn, an, a_hp, a_kn in ((8, 9, 10, "r_hip", "r_knee"), (11, 12, 13, "l_hip", "l_knee")):
        kp[..., kn, :] = kp[..., hp, :] + p["thigh"] * _dir(lean + ang[a_hp])
        kp[..., an, :] = kp[..., kn, :] + p["shank"] * _dir(lean + ang[a_hp] + ang[a_kn])
    head_up = -_dir(lean + ang["head"])
    head_side = np.stack([np.cos(lean + ang["head"]), -np.sin(lean + ang["head"])], -1)
    nose = neck + p["neck_to_nose"] * head_up
    kp[..., 0, :] = nose
    for idx, sx, dx, dy in ((14, -1, "eye_dx", "eye_dy"), (15, 1, "eye_dx", "eye_dy"),
                            (16, -1, "ear_dx", "ear_dy"), (17, 1, "ear_dx", "ear_dy")):
        kp[..., idx, :] = nose + sx * p[dx] * head_side + p[dy] * head_up
    return kp
