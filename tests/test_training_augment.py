"""Augmentations on cached dB log-mels: each switch works alone, off means untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from claudio_daemon.features.frontend import FrontEndConfig
from training.augment import AugmentConfig, augment_example, band_limit, mixup_batch, pitch_shift
from training.frontend import LogMel, mel_centre_frequencies

CFG = FrontEndConfig()
NOTHING = dict(
    gain_db=0.0,
    pitch_shift_semitones=0.0,
    time_shift=False,
    spec_augment=False,
    mixup_alpha=0.0,
    band_limit_prob=0.0,
)


def _clip(seed: int = 0) -> torch.Tensor:
    """A real log-mel (noise plus a few tones) in clamped dB, [1, 128, 256]."""
    rng = np.random.default_rng(seed)
    t = np.arange(CFG.clip_samples) / CFG.sample_rate
    wave = 0.05 * rng.standard_normal(t.size) + sum(
        0.2 * np.sin(2 * np.pi * f * t) for f in (500, 2000, 7000)
    )
    return LogMel(CFG, normalise=False)(torch.from_numpy(wave.astype(np.float32)))[0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_disabled_or_all_zero_switches_leave_the_clip_untouched() -> None:
    db = _clip()
    assert torch.equal(augment_example(db, AugmentConfig(enabled=False), _gen()), db)
    assert torch.equal(augment_example(db, AugmentConfig(**NOTHING), _gen()), db)
    assert not torch.equal(augment_example(db, AugmentConfig(), _gen()), db)


def test_default_augmentation_is_seeded_and_keeps_the_dynamic_range() -> None:
    db = _clip()
    a = augment_example(db, AugmentConfig(), _gen(5))
    torch.testing.assert_close(a, augment_example(db, AugmentConfig(), _gen(5)))
    assert not torch.equal(a, augment_example(db, AugmentConfig(), _gen(6)))
    for seed in range(10):
        out = augment_example(db, AugmentConfig(), _gen(seed))
        assert out.shape == db.shape and out.dtype == torch.float32
        assert out.min() >= out.max() - CFG.top_db - 1e-4


def test_gain_is_a_bounded_db_offset() -> None:
    db = _clip()
    offsets = []
    for seed in range(20):
        out = augment_example(db, AugmentConfig(**{**NOTHING, "gain_db": 6.0}), _gen(seed))
        diff = out - db
        assert torch.allclose(diff, diff.flatten()[0].expand_as(diff), atol=1e-4)
        offsets.append(diff.flatten()[0].item())
    assert max(offsets) <= 6.0 and min(offsets) >= -6.0
    assert max(offsets) - min(offsets) > 4.0


def test_time_shift_rolls_the_frames() -> None:
    db = _clip()
    out = augment_example(db, AugmentConfig(**{**NOTHING, "time_shift": True}), _gen(3))
    shifts = [k for k in range(db.shape[-1]) if torch.equal(torch.roll(db, k, dims=-1), out)]
    assert len(shifts) == 1


def test_spec_augment_masks_with_the_clip_mean_within_limits() -> None:
    db = _clip()
    cfg = AugmentConfig(**{**NOTHING, "spec_augment": True})
    for seed in range(10):
        out = augment_example(db, cfg, _gen(seed))
        changed = out != db
        rows = changed.all(dim=-1)[0].sum().item()
        cols = changed.all(dim=-2)[0].sum().item()
        assert rows <= 2 * cfg.freq_mask_bins and cols <= 2 * cfg.time_mask_frames
        assert torch.allclose(out[changed], db.mean().expand(int(changed.sum())))


def test_band_limit_empties_bins_above_the_cut_off() -> None:
    db = _clip()
    centres = mel_centre_frequencies(CFG)
    cfg = AugmentConfig(**{**NOTHING, "band_limit_prob": 1.0, "band_limit_hz": (5000.0, 5000.0)})
    out = augment_example(db, cfg, _gen())[0]
    floor = out.max() - CFG.top_db
    above = centres >= 5000.0
    assert torch.equal(out[above], floor.expand_as(out[above]))
    below = centres < 5000.0 * 2**-0.25
    torch.testing.assert_close(out[below], db[0][below])
    # Inside the roll-off the level is lowered but not yet at the floor everywhere.
    ramp = ~above & ~below
    assert ramp.any() and (out[ramp] <= db[0][ramp] + 1e-5).all()
    # The 7 kHz tone is gone, the 2 kHz tone is not.
    assert out[centres.sub(7000).abs().argmin()].max() == floor
    assert out[centres.sub(2000).abs().argmin()].max() > floor + 40


def test_band_limit_function_respects_any_cut_off() -> None:
    db = _clip(1)
    for cutoff in (4000.0, 8000.0, 9500.0):
        out = band_limit(db, cutoff, CFG, rolloff_octaves=0.0)[0]
        above = mel_centre_frequencies(CFG) >= cutoff
        assert (out[above] == db.max() - CFG.top_db).all()
        assert torch.equal(out[~above], db[0][~above])


def test_pitch_shift_moves_a_tone_along_the_mel_axis() -> None:
    centres = mel_centre_frequencies(CFG)
    db = torch.full((1, CFG.n_mels, 8), -80.0)
    src = int(centres.sub(1000).abs().argmin())
    db[0, src] = 0.0
    up = pitch_shift(db, 12.0, CFG)[0].mean(dim=-1)
    assert centres[int(up.argmax())].item() == pytest.approx(2 * centres[src].item(), rel=0.04)
    down = pitch_shift(db, -12.0, CFG)[0].mean(dim=-1)
    assert centres[int(down.argmax())].item() == pytest.approx(centres[src].item() / 2, rel=0.04)
    torch.testing.assert_close(pitch_shift(db, 0.0, CFG), db)


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda() -> None:
    n = 6
    values = torch.arange(n, dtype=torch.float32) * 10.0
    x = values.view(n, 1, 1, 1).expand(n, 1, 4, 5).clone()
    y = torch.eye(n)
    mixed_x, mixed_y = mixup_batch(x, y, alpha=0.4, gen=_gen(1))
    torch.testing.assert_close(mixed_y.sum(dim=1), torch.ones(n))
    # With one-hot labels, each mixed input must be the label-weighted sum of the originals.
    torch.testing.assert_close(mixed_x[:, 0, 0, 0], mixed_y @ values)
    assert (mixed_y.max(dim=1).values >= 0.5).all()
    assert not torch.equal(mixed_y, y)
    same_x, same_y = mixup_batch(x, y, alpha=0.0, gen=_gen(1))
    assert same_x is x and same_y is y


def test_segment_view_tiles_a_short_stretch_around_the_loudest_frame() -> None:
    from training.augment import segment_view

    db = _clip()
    db[..., 200] += 10.0  # one loud moment near the end (a clap in a quiet clip)
    n = db.shape[-1]
    frame_s = CFG.hop_length / CFG.sample_rate
    for seed in range(5):
        out = segment_view(db, 1.0, _gen(seed), CFG)
        length = int(round(1.0 / frame_s))
        assert out.shape == db.shape
        # Periodic with the stretch's length, and the loud frame is in every period.
        assert torch.equal(out[..., length : 2 * length], out[..., :length])
        loud = out.mean(dim=(0, 1)).argmax().item() % length
        assert torch.equal(out[..., loud], db[..., 200])
    # A stretch as long as the window leaves the clip as it is.
    assert torch.equal(segment_view(db, 10.0, _gen(), CFG), db)
    # Through augment_example, only with its probability.
    only = AugmentConfig(**NOTHING, segment_prob=1.0)
    assert not torch.equal(augment_example(db, only, _gen()), db)
    assert torch.equal(augment_example(db, AugmentConfig(**NOTHING, segment_prob=0.0), _gen()), db)
    assert n == 256
