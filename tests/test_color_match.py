"""Color Match to Reference: the Lab transfer on a synthetic, deterministic colour drift (a cast that grows
from window to window), its limits (strength 0, strength 1, nothing to match, masks, chunking), the
node's input checks, and the node in a real ComfyUI server on frames of a video.

The per-frame measure is the distance (CIE76 delta E) between a frame's average Lab colour and the
reference's: the frames show other pictures than the reference, so only average colours compare."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from conftest import ARTIFACTS, ROOT
from identity_animator.models import color_match as cm

logger = logging.getLogger(__name__)

FRAMES, H, W = 64, 48, 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These frames are tiny: on a busy two-core machine a second torch thread only adds waiting (the
    transfer of 64 such frames measured 5 s with two threads there, 0.04 s with one)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def picture(h: int = H, w: int = W) -> torch.Tensor:
    """A reference-like picture [H, W, 3]: smooth colour gradients and one patch, all well inside sRGB."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None].expand(h, w)
    img = torch.stack([0.25 + 0.5 * x, 0.3 + 0.4 * y, 0.55 - 0.3 * x * y], -1)
    img[h // 4:h // 2, w // 3:w // 2] = torch.tensor([0.75, 0.55, 0.45])
    return img


def moving(count: int = FRAMES) -> torch.Tensor:
    """The reference sliding sideways: every frame has the reference's colours in other places."""
    return torch.stack([picture().roll(2 * i, 1) for i in range(count)])


def with_cast(frames: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """A warm, brighter cast whose size per frame is ``amount`` (0 = none, 1 = the strongest)."""
    a = amount.float()[:, None, None]
    gain = torch.stack([1 + 0.25 * a, 1 - 0.05 * a, 1 - 0.25 * a], -1)
    return (frames * gain + 0.05 * a[..., None]).clamp(0, 1)


def drift(count: int = FRAMES) -> torch.Tensor:
    """Frames whose cast grows steadily from none at frame 0 to the strongest at the end, as sampling
    windows fused over their overlaps drift: a little more with every window."""
    return with_cast(moving(count), torch.arange(count) / (count - 1))


def reference() -> torch.Tensor:
    return picture()[None]


def distances(images: torch.Tensor, ref: torch.Tensor, mask=None, ref_mask=None) -> torch.Tensor:
    target, _, _ = cm.frame_stats(ref, ref_mask).pooled()
    return cm.color_distance(cm.frame_stats(images, mask), target)


# --- the transfer ------------------------------------------------------------------------------

def test_growing_drift_is_removed_without_a_jump():
    frames, ref = drift(), reference()
    result = cm.match_colors(frames, ref)          # defaults: mean_std, windows of 16 overlapping by 4
    before, after = distances(frames, ref), distances(result.images, ref)
    assert torch.allclose(result.before, before) and torch.allclose(result.after, after, atol=1e-6)
    logger.info("per-frame distance before: %s", before.numpy().round(2).tolist())
    logger.info("per-frame distance after:  %s", after.numpy().round(2).tolist())
    assert before.mean() > 10 and before.max() > 20                      # the drift is real
    assert after.mean() < 0.1 * before.mean(), (after.mean(), before.mean())   # the stated margin: 90 % less
    assert after.max() < 0.2 * before.max(), (after.max(), before.max())       # and the worst frame 80 % less
    # between the first and last window centres (frames 7.5 .. 55.5) a steady drift is followed exactly
    assert after[8:56].max() < 0.1
    # the corrected video changes colour from frame to frame no faster than the input did: no seam made
    means = cm.frame_stats(result.images).mean
    step_in = (cm.frame_stats(frames).mean.diff(dim=0)).norm(dim=-1).max()
    assert (means.diff(dim=0)).norm(dim=-1).max() <= step_in + 0.05


def test_per_frame_and_one_correction_for_the_whole_video():
    frames, ref = drift(), reference()
    per_frame = cm.match_colors(frames, ref, window_length=1, window_overlap=0)
    assert per_frame.after.max() < 0.2                     # every frame on the reference's average colour
    whole = cm.match_colors(frames, ref, window_length=10_000, window_overlap=0)
    # one correction: the average cast goes, the drift around it stays
    assert whole.after.mean() < 0.7 * whole.before.mean() and whole.after.max() > 5


def test_strength_zero_is_identity_and_one_matches_the_mean():
    frames, ref = drift(), reference()
    assert torch.equal(cm.match_colors(frames, ref, strength=0.0).images, frames)
    uniform = with_cast(moving(24), torch.full((24,), 0.5))   # one cast throughout: one window's correction fits all
    target, _, _ = cm.frame_stats(ref).pooled()
    for mode in ("mean_std", "mean"):
        full = cm.match_colors(uniform, ref, strength=1.0, mode=mode, window_length=24, window_overlap=0)
        assert full.before.min() > 8
        assert full.after.max() < 0.05, (mode, full.after.max())
        assert torch.allclose(cm.frame_stats(full.images).mean.mean(0), target, atol=0.05)
    half = cm.match_colors(uniform, ref, strength=0.5, mode="mean", window_length=24, window_overlap=0)
    assert torch.allclose(half.after, full.before / 2, rtol=0.03)    # a linear blend in Lab


def test_without_a_colour_difference_nothing_changes():
    frames, ref = moving(20), reference()           # the reference's own colours, moved about
    for mode in cm.MODES:
        for match_to in cm.TARGETS:
            result = cm.match_colors(frames, ref, mode=mode, match_to=match_to)
            assert torch.equal(result.images, frames), (mode, match_to)
    assert result.before.max() < 1e-3


def test_color_only_keeps_the_brightness():
    frames, ref = drift(), reference()
    out = cm.match_colors(frames, ref, mode="color_only").images
    before, after = cm.frame_stats(frames).mean, cm.frame_stats(out).mean
    target, _, _ = cm.frame_stats(ref).pooled()
    assert torch.allclose(after[:, 0], before[:, 0], atol=0.5)                     # L as it was
    tint = lambda m: (m[:, 1:] - target[1:]).norm(dim=-1)
    assert tint(after).mean() < 0.1 * tint(before).mean()                          # a/b on the reference's


def test_first_window_keeps_the_start_and_pulls_the_rest_to_it():
    frames = drift()
    result = cm.match_colors(frames, reference(), match_to="first_window")
    assert torch.equal(result.images[:8], frames[:8])       # up to the first window's centre: untouched
    first, _, _ = cm.frame_stats(frames).pooled(range(16), cm.window_weights(list(range(16))))
    after = cm.color_distance(cm.frame_stats(result.images), first)
    assert after.max() < 3 and cm.color_distance(cm.frame_stats(frames), first).max() > 15


def test_mask_measures_only_the_marked_part():
    ref = reference()
    mask = torch.zeros(1, H, W)
    mask[:, :, : W // 2] = 1                                   # the left half is "the person"
    frames = with_cast(ref.expand(12, -1, -1, -1).clone(), torch.full((12,), 0.6))
    g = torch.Generator().manual_seed(0)
    frames[..., W // 2:, :] = torch.rand(12, H, W - W // 2, 3, generator=g)   # a background that changes wildly
    masked = cm.match_colors(frames, ref, mask=mask, reference_mask=mask, mode="mean", window_length=1,
                             window_overlap=0)
    assert masked.before.min() > 8 and masked.after.max() < 0.3
    assert torch.allclose(masked.after, distances(masked.images, ref, mask, mask), atol=1e-6)
    unmasked = cm.match_colors(frames, ref, mode="mean", window_length=1, window_overlap=0)
    assert distances(unmasked.images, ref, mask, mask).min() > 3       # the background pulled the person off
    # a frame with nothing measured has no distance and takes its neighbours' correction
    per_frame = mask.expand(12, -1, -1).clone()
    per_frame[5] = 0
    result = cm.match_colors(frames, ref, mask=per_frame, reference_mask=mask, mode="mean", window_length=1,
                             window_overlap=0)
    assert torch.isnan(result.before[5]) and not torch.isnan(result.before[4])
    assert cm.summary(result.after)[1] < 0.3


def test_chunks_give_the_same_frames_and_report_progress():
    frames, ref = drift(20), reference()
    done = []
    one = cm.match_colors(frames, ref, chunk=1, progress=lambda d, t: done.append((d, t)))
    seven = cm.match_colors(frames, ref, chunk=7)
    assert torch.allclose(one.images, seven.images, atol=1e-6)
    assert done == [(d, 40) for d in range(1, 41)]
    assert 0 <= float(one.images.min()) and float(one.images.max()) <= 1 and one.images.shape == frames.shape


def test_window_plan():
    assert cm.window_plan(40, 16, 4) == [list(range(s, s + 16)) for s in (0, 12)] + [list(range(24, 40))]
    assert cm.window_plan(10, 16, 4) == [list(range(10))]
    assert cm.window_plan(3, 1, 0) == [[0], [1], [2]]
    assert cm.window_weights([0]) == [1.0]
    short = cm.window_weights(list(range(10)))        # a video shorter than a window: still centred
    assert short == pytest.approx(short[::-1]) and max(short) == short[4]
    with pytest.raises(ValueError, match="window_overlap"):
        cm.window_plan(10, 4, 4)


# --- the node ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node():
    from identity_animator.nodes.color import ColorMatch

    return ColorMatch


def test_node_runs_and_checks_its_inputs(node):
    from identity_animator.nodes.validation import InputError

    frames, ref = drift(), reference()
    out, video = node.execute(frames, ref.repeat(3, 1, 1, 1), 1.0, "mean_std", "reference", 16, 4, fps=12.5).result
    assert out.shape == frames.shape and distances(out, ref).mean() < 0.1 * distances(frames, ref).mean()
    parts = video.get_components()
    assert torch.equal(parts.images, out) and float(parts.frame_rate) == 12.5 and parts.audio is None
    message = node.validate_inputs(window_length=4, window_overlap=4)
    assert message.startswith("Color Match to Reference: window_overlap (4) must be smaller than window_length (4)")
    assert node.validate_inputs(mode="reinhard").startswith("Color Match to Reference: mode is 'reinhard'")
    with pytest.raises(InputError, match="mask has 3 masks but there are 64 frames"):
        node.execute(frames, ref, 1.0, "mean", "reference", 16, 4, mask=torch.ones(3, H, W))
    with pytest.raises(InputError, match="reference_mask is black everywhere"):
        node.execute(frames, ref, 1.0, "mean", "reference", 16, 4, reference_mask=torch.zeros(1, 8, 8))
    with pytest.raises(InputError, match="strength is 1.5; it must be between 0.0 and 1.0"):
        node.execute(frames, ref, 1.5, "mean", "reference", 16, 4)


# --- through a real ComfyUI server ---------------------------------------------------------------

def _saved(server, result, node_id) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    images = result.outputs[node_id]["images"]
    arrays = [np.asarray(Image.open(server.base_dir / "output" / i["subfolder"] / i["filename"]).convert("RGB"))
              for i in images]
    return torch.from_numpy(np.stack(arrays)).float() / 255


def _table(before: torch.Tensor, after: torch.Tensor) -> str:
    rows = ["| frame | before | after |", "|---:|---:|---:|"]
    rows += [f"| {i} | {b:.2f} | {a:.2f} |" for i, (b, a) in enumerate(zip(before.tolist(), after.tolist()))]
    return "\n".join(rows)


def color_match_nodes(frames, ref, prefix: str, **inputs) -> dict:
    """IDA_ColorMatch on ``frames`` against ``ref`` (links), both sides and the reference saved."""
    return {
        "cm": {"class_type": "IDA_ColorMatch", "inputs": {"images": frames, "reference": ref, "strength": 1.0,
               "mode": "mean_std", "match_to": "reference", "window_length": 16, "window_overlap": 4, **inputs}},
        "cm_before": {"class_type": "SaveImage", "inputs": {"images": frames, "filename_prefix": f"{prefix}/before"}},
        "cm_after": {"class_type": "SaveImage", "inputs": {"images": ["cm", 0], "filename_prefix": f"{prefix}/after"}},
        "cm_ref": {"class_type": "SaveImage", "inputs": {"images": ref, "filename_prefix": f"{prefix}/reference"}},
    }


def measure(server, result, prefix: str):
    """Per-frame distances before and after, from the saved PNGs (8-bit, as a video would keep them)."""
    before, after, ref = (_saved(server, result, k) for k in ("cm_before", "cm_after", "cm_ref"))
    table = _table(distances(before, ref), distances(after, ref))
    (ARTIFACTS / "color_match").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "color_match" / f"{prefix}.md").write_text(table + "\n")
    logger.info("%s: per-frame colour distance to the reference\n%s", prefix, table)
    return distances(before, ref), distances(after, ref), before, after


def test_color_match_through_the_server(server):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face_reference.png"}},
        "2": {"class_type": "LoadVideo", "inputs": {"file": "driving.mp4"}},
        "3": {"class_type": "IDA_DrivingVideo", "inputs": {"video": ["2", 0], "start_frame": 0, "frame_cap": 0,
                                                           "every_nth": 1}},
        # mean: the dark video and the bright, colourful face share no spread to match (see docs/color_match.md)
        **color_match_nodes(["3", 0], ["1", 0], "color_match_server", mode="mean"),
    }
    result = server.client.run(prompt, timeout=300)
    assert result.status == "success", result.error
    before, after, frames_in, frames_out = measure(server, result, "color_match_server")
    assert frames_out.shape == frames_in.shape and frames_in.shape[0] == 20
    # what is left is colours clipped at the edge of sRGB and the PNGs' 8-bit steps
    assert before.min() > 10 and after.max() < 2.0 and after.mean() < 0.15 * before.mean(), (before, after)
    assert "Colour distance to the reference" in server.log()


SETTINGS = [   # (mode, window_length, window_overlap, strength): the node's default first
    ("mean_std", 16, 4, 1.0), ("mean", 16, 4, 1.0), ("mean_std", 16, 4, 0.5), ("mean_std", 1, 0, 1.0),
    ("mean", 1, 0, 1.0), ("mean_std", 10_000, 0, 1.0)]


@pytest.mark.skipif(not os.environ.get("IDA_MEASURE_COLOR_DRIFT"),
                    reason="a measurement for docs/color_match.md, not a check: set IDA_MEASURE_COLOR_DRIFT=1")
def test_measure_the_long_tiny_weights_animation(server):
    """The long-video workflow on tiny random weights (every driving frame, several sampling windows),
    followed by the node at its defaults; the other settings are applied here to the same saved frames.
    Writes the tables recorded in docs/color_match.md to test-artifacts/color_match/."""
    from test_workflows import LONG, tiny_for

    prompt = tiny_for(ROOT / "workflows" / "api" / LONG)
    ids = {node["class_type"]: key for key, node in prompt.items()}
    prompt.update(color_match_nodes([ids["IDA_AnimationDecode"], 0], [ids["IDA_FitReference"], 0], "color_match_long"))
    result = server.client.run(prompt, timeout=900)
    assert result.status == "success", result.error
    before, after, frames, _ = measure(server, result, "color_match_long")
    ref = _saved(server, result, "cm_ref")
    rows = ["| mode | window_length / overlap | strength | mean before | worst before | mean after | worst after |",
            "|---|---|---:|---:|---:|---:|---:|",
            f"| mean_std (node, through the server) | 16 / 4 | 1 | {before.mean():.2f} | {before.max():.2f} | "
            f"{after.mean():.2f} | {after.max():.2f} |"]
    for mode, length, overlap, strength in SETTINGS:
        out = cm.match_colors(frames, ref, mode=mode, window_length=length, window_overlap=overlap,
                              strength=strength).images
        d = distances((out * 255).round() / 255, ref)     # 8-bit, as the node's output was measured
        rows.append(f"| {mode} | {length if length < 10_000 else 'whole video'} / {overlap} | {strength:g} | "
                    f"{before.mean():.2f} | {before.max():.2f} | {d.mean():.2f} | {d.max():.2f} |")
    summary = "\n".join(rows)
    (ARTIFACTS / "color_match" / "color_match_long_settings.md").write_text(summary + "\n")
    logger.info("long tiny-weights animation, %d frames:\n%s", len(before), summary)
    assert after.mean() < before.mean()
