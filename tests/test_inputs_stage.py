"""Where pictures enter the graph: the driving video keeps its timing and sound through to the saved
animation, start / cap / every-n-th pick the frames, and the reference is fitted to the generation size
by crop or pad instead of being stretched."""
from __future__ import annotations

import math

import av
import numpy as np
import pytest
import torch

from ida_factory import driving_frames, ramp_amplitude, write_video
from identity_animator.models.fit import apply_fit, plan_fit, size_warning
from identity_animator.nodes import inputs

FPS, SECONDS_FRAMES, RATE = 30, 45, 44100


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = driving_frames(SECONDS_FRAMES)
    for i, f in enumerate(frames):   # frame i carries its index in a block-aligned top-left square
        f[:16, :16] = i * 5
    return write_video(tmp_path_factory.mktemp("clip") / "dance30.mp4", frames, fps=FPS, audio_rate=RATE)


@pytest.mark.parametrize("start,cap,nth", [(0, 0, 1), (6, 10, 2), (40, 0, 3), (3, 4, 1)])
def test_the_kept_frames_are_the_chosen_ones(clip, start, cap, nth):
    frames, rate, audio, total = inputs.read_driving_video(str(clip), start, cap, nth)
    want = list(range(start, SECONDS_FRAMES, nth))[:cap or None]
    assert rate == FPS and frames.shape[0] == len(want) == inputs.selection_count(SECONDS_FRAMES, start, cap, nth)
    marks = (frames[:, 4:12, 4:12].mean(dim=(1, 2, 3)) * 255 / 5).round().int().tolist()
    assert marks == want
    # the sound covers exactly the kept stretch of the video
    assert audio["sample_rate"] == RATE and audio["waveform"].shape[:2] == (1, 2)
    assert abs(audio["waveform"].shape[-1] - round(len(want) * nth / FPS * RATE)) <= 1


def test_the_sound_is_cut_where_the_frames_start(clip):
    start, nth = 9, 2
    _, _, audio, _ = inputs.read_driving_video(str(clip), start, 12, nth)
    wave = audio["waveform"][0, 0].numpy()
    duration = SECONDS_FRAMES / FPS
    for t in (0.02, 0.6):   # seconds into the cut
        seg = wave[int((t - 0.02) * RATE):int((t + 0.02) * RATE)]
        loudness = math.sqrt(2 * float(np.mean(seg ** 2)))
        assert loudness == pytest.approx(ramp_amplitude(start / FPS + t, duration), rel=0.2, abs=0.01)


def test_frames_in_memory_get_the_same_selection():
    images = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 2, 2, 3) / 20
    audio = {"waveform": torch.arange(20 * 100, dtype=torch.float32).view(1, 1, -1), "sample_rate": 100}
    picked, cut = inputs.select_frames(images, 10, audio, start=4, cap=3, every_nth=3)
    assert (picked[:, 0, 0, 0] * 20).round().tolist() == [4, 7, 10]
    assert cut["waveform"].shape[-1] == 90 and cut["waveform"][0, 0, 0] == 40   # from 0.4 s, 0.9 s long


def test_fit_keeps_proportions():
    wide = torch.rand(1, 100, 300, 3)
    crop = plan_fit(300, 100, 64, 64, "crop_center")
    assert crop.crop == (100, 0, 100, 100)
    face = plan_fit(300, 100, 64, 64, "crop_face", face_box=(10, 20, 40, 60))
    assert face.crop == (0, 0, 100, 100)                         # centred on the face, clamped inside
    pad = plan_fit(300, 100, 64, 64, "pad")
    assert pad.place == (0, 21, 64, 21)
    out = apply_fit(wide, pad, 64, 64)
    assert out.shape == (1, 64, 64, 3) and out[0, :21].abs().sum() == 0 and out[0, 21:42].abs().sum() > 0
    same = plan_fit(200, 400, 64, 128, "crop_center")
    assert same.crop == (0, 0, 200, 400)                         # already the right shape: nothing is cut
    assert apply_fit(torch.rand(1, 400, 200, 3), same, 64, 128).shape == (1, 128, 64, 3)
    assert size_warning(512, 512) is None and size_warning(576, 1024) is None
    assert "not a size StableAnimator was trained at" in size_warning(256, 256)


def _timing_prompt(clip_name: str, start: int, cap: int, nth: int) -> dict:
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": clip_name}},
        "2": {"class_type": "IDA_DrivingVideo", "inputs": {"video": ["1", 0], "start_frame": start, "frame_cap": cap,
                                                           "every_nth": nth}},
        "3": {"class_type": "IDA_LoadSVDBase", "inputs": {"ckpt_name": "svd_xt.safetensors"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": ["2", 3]}},
        "5": {"class_type": "IDA_AnimationDecode", "inputs": {"vae": ["3", 1], "latent": ["4", 0], "chunk_size": 4,
                                                              "decode_on_cpu": False, "fps": ["2", 1], "audio": ["2", 2]}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 1], "filename_prefix": "timing/dance",
                                                    "format": "auto", "codec": "auto"}},
    }


@pytest.mark.compat
def test_saved_video_keeps_the_driving_fps_frame_count_and_sound(server, clip):
    """Through the server: a 30 fps clip with sound, every 2nd frame from frame 6, at most 10 frames."""
    import shutil

    shutil.copy(clip, server.base_dir / "input" / clip.name)
    result = server.client.run(_timing_prompt(clip.name, 6, 10, 2), timeout=300)
    assert result.status == "success", result.error
    saved = result.outputs["6"]["images"][0]
    path = server.base_dir / "output" / saved["subfolder"] / saved["filename"]
    with av.open(str(path)) as video:
        picture, sound = video.streams.video[0], video.streams.audio
        assert picture.average_rate == 15                       # 30 fps / every 2nd frame
        assert sum(1 for _ in video.decode(picture)) == 10
        assert len(sound) == 1
        assert float(sound[0].duration * sound[0].time_base) == pytest.approx(10 / 15, abs=0.06)


def test_a_video_made_by_another_node_goes_through_the_host_decoder(clip):
    """A VIDEO that is not a whole plain file (here: made from frames; on newer hosts also a trimmed or
    cropped one) is read with the host's own get_components, then given the same selection."""
    from fractions import Fraction

    from comfy_api.latest import InputImpl, Types

    images = torch.rand(12, 16, 16, 3)
    audio = {"waveform": torch.rand(1, 2, 12 * 1000), "sample_rate": 24000}
    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, audio=audio, frame_rate=Fraction(24)))
    assert inputs._plain_file(video) is None and inputs._plain_file(InputImpl.VideoFromFile(str(clip))) == str(clip)
    frames, fps, sound, count = inputs.DrivingVideo.execute(video, start_frame=2, frame_cap=4, every_nth=2)
    assert count == 4 and torch.equal(frames, images[2:10:2]) and fps == 12.0
    assert sound["waveform"].shape[-1] == round(4 * 2 / 24 * 24000)
