"""Window schedules and fusion weights against the published definitions."""
from __future__ import annotations

import pytest
import torch

from identity_animator.models.windows import (fuse, fusion_weights, magicanimate_windows, official_windows,
                                              periodic_noise, triangular_weights, windows_for_step)


def published_official(F, tile=16, overlap=4):
    """StableAnimator's index construction, re-stated from its description."""
    idx = [[0, *range(i + 1, min(i + tile, F))] for i in range(0, F - tile + 1, tile - overlap)]
    if idx[-1][-1] < F - 1:
        idx.append([0, *range(F - tile + 1, F)])
    return idx


@pytest.mark.parametrize("frames", [1, 15, 16, 17, 28, 100])
def test_official_schedule(frames):
    wins = official_windows(frames, 16, 4)
    assert sorted({i for w in wins for i in w}) == list(range(frames))         # every frame covered
    if frames >= 16:
        assert wins == published_official(frames)
        assert all(w[0] == 0 and len(w) == 16 for w in wins)
    else:
        assert wins == [list(range(frames))]                                   # the original crashes here


def test_official_known_cases():
    assert official_windows(28, 16, 4) == [[0, *range(1, 16)], [0, *range(13, 28)]]
    assert len(official_windows(100, 16, 4)) == 8
    assert official_windows(17, 16, 4)[-1] == [0, *range(2, 17)]


@pytest.mark.parametrize("frames", [1, 15, 16, 17, 28, 100])
@pytest.mark.parametrize("wrap", [False, True])
def test_magicanimate_schedule(frames, wrap):
    wins = magicanimate_windows(frames, 16, 4, wrap=wrap)
    assert sorted({i for w in wins for i in w}) == list(range(frames))
    if frames > 16:
        assert all(len(w) == 16 for w in wins)
        assert all((w[k + 1] - w[k]) % frames == 1 for w in wins for k in range(15))   # consecutive, maybe wrapping
        assert any(0 in w and frames - 1 in w for w in wins) == wrap or frames <= 16


def test_triangular_weights_match_the_published_values():
    w = triangular_weights(16)
    assert w[0] == pytest.approx(0.0625) and w[1] == pytest.approx(0.1875) and w[7] == pytest.approx(0.9375)
    assert w == w[::-1] and fusion_weights("magicanimate", 16) == [1.0] * 16


@pytest.mark.parametrize("schedule", ["official", "magicanimate"])
def test_shift_is_seeded_and_keeps_coverage(schedule):
    a = [windows_for_step(schedule, 100, 16, 4, step=s, shift=True, seed=7) for s in range(6)]
    b = [windows_for_step(schedule, 100, 16, 4, step=s, shift=True, seed=7) for s in range(6)]
    assert a == b and len({str(w) for w in a}) > 1
    for wins in a:
        assert sorted({i for w in wins for i in w}) == list(range(100))


def test_fuse_is_the_weighted_average():
    wins = official_windows(28, 16, 4)
    w = triangular_weights(16)
    preds = [torch.full((16, 2), 1.0), torch.full((16, 2), 3.0)]
    out = fuse(preds, wins, w, 28)
    assert torch.allclose(out[5], torch.tensor([1.0, 1.0])) and torch.allclose(out[20], torch.tensor([3.0, 3.0]))
    # frame 0 is in both windows with the same (edge) weight: plain mean
    assert torch.allclose(out[0], torch.tensor([2.0, 2.0]))
    # an overlap frame: weights by position
    k1, k2 = wins[0].index(14), wins[1].index(14)
    assert torch.allclose(out[14, 0], torch.tensor((w[k1] * 1 + w[k2] * 3) / (w[k1] + w[k2])))


def test_periodic_noise_repeats_one_window():
    n = periodic_noise((40, 4, 2, 2), 16, torch.Generator().manual_seed(0))
    assert torch.equal(n[0], n[16]) and torch.equal(n[3], n[35]) and not torch.equal(n[0], n[1])
    assert periodic_noise((5, 1), 16, torch.Generator().manual_seed(0)).shape == (5, 1)


def test_bad_window_settings_are_named():
    with pytest.raises(ValueError, match="overlap < length"):
        windows_for_step("official", 30, 16, 16)
    with pytest.raises(ValueError, match="Unknown window schedule"):
        windows_for_step("spiral", 30, 16, 4)
