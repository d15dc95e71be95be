"""The training front end: clip loading (resample, pad/trim) and LogMel against the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from claudio_daemon.features.frontend import FrontEndConfig
from training.audio import AudioLoadError, fit_length, load_audio, load_clip, resample
from training.frontend import LogMel, mel_centre_frequencies

CFG = FrontEndConfig()
SR = CFG.sample_rate


def _noise(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(round(seconds * rate)))).astype(np.float32)


def _numpy_logmel(wave: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Independent float64 reading of the contract: reflect pad, periodic Hann, |rfft|^2, HTK."""
    pad = cfg.n_fft // 2
    padded = np.pad(wave.astype(np.float64), pad, mode="reflect")
    n_frames = 1 + (len(padded) - cfg.n_fft) // cfg.hop_length
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    frames = np.stack(
        [padded[i * cfg.hop_length : i * cfg.hop_length + cfg.n_fft] for i in range(n_frames)]
    )
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, F)
    fb = AF.melscale_fbanks(
        cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, None, "htk"
    ).numpy()  # (F, M)
    db = 10 * np.log10(np.maximum(power @ fb.astype(np.float64), cfg.amin)).T
    return np.maximum(db, db.max() - cfg.top_db)


def test_default_clip_gives_the_model_input_shape() -> None:
    assert CFG.clip_samples == 130_977
    wave = torch.from_numpy(_noise(CFG.clip_seconds))
    out = LogMel(CFG)(wave)
    assert out.shape == (1, 1, 128, 256)
    assert out.dtype == torch.float32
    batch = LogMel(CFG)(torch.stack([wave, wave * 0.5]))
    assert batch.shape == (2, 1, 128, 256)


def test_logmel_matches_an_independent_numpy_reading_of_the_contract() -> None:
    t = np.arange(CFG.clip_samples) / SR
    wave = (0.3 * np.sin(2 * np.pi * 1000 * t) + _noise(CFG.clip_seconds, seed=3)).astype(
        np.float32
    )
    ours = LogMel(CFG, normalise=False)(torch.from_numpy(wave))[0, 0].numpy()
    ref = _numpy_logmel(wave, CFG)
    assert ours.shape == ref.shape == (128, 256)
    assert np.max(np.abs(ours - ref)) < 1e-3


def test_top_db_clamp_is_per_clip() -> None:
    loud = np.zeros(CFG.clip_samples, dtype=np.float32)
    loud[: CFG.clip_samples // 2] = np.sin(2 * np.pi * 440 * np.arange(CFG.clip_samples // 2) / SR)
    quiet = 1e-3 * _noise(CFG.clip_seconds, seed=1)
    db = LogMel(CFG, normalise=False)(torch.from_numpy(np.stack([loud, quiet])))[:, 0]
    for clip in db:
        peak = clip.max().item()
        assert clip.min().item() >= peak - CFG.top_db - 1e-4
    # The silent half of the loud clip sits exactly on its own floor ...
    assert db[0].min().item() == pytest.approx(db[0].max().item() - CFG.top_db, abs=1e-4)
    # ... and the quiet clip was not clamped against the loud clip's maximum.
    assert db[1].max().item() < db[0].max().item() - 30
    assert db[1].min().item() < db[0].max().item() - CFG.top_db


def test_normalise_uses_the_configs_mean_and_std() -> None:
    wave = torch.from_numpy(_noise(CFG.clip_seconds, seed=2))
    cfg = CFG.with_stats(-42.5, 17.25)
    raw = LogMel(cfg, normalise=False)(wave)
    norm = LogMel(cfg)(wave)
    torch.testing.assert_close(norm, (raw + 42.5) / 17.25)


def test_mel_centres_sit_at_the_filter_bank_peaks() -> None:
    n_freqs = 8193  # fine grid, so the peak of each triangle is found precisely
    fb = AF.melscale_fbanks(n_freqs, CFG.f_min, CFG.f_max, CFG.n_mels, SR, None, "htk")
    grid = np.linspace(0, SR / 2, n_freqs)
    peaks = grid[fb.argmax(dim=0).numpy()]
    np.testing.assert_allclose(mel_centre_frequencies(CFG).numpy(), peaks, atol=SR / 2 / n_freqs)


def test_fit_length_tiles_short_and_keeps_the_centre_of_long() -> None:
    short = np.arange(1000, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(short, 2500), np.arange(2500) % 1000)
    long = np.arange(10_000, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(long, 3000), np.arange(3500, 6500))
    np.testing.assert_array_equal(fit_length(long, 10_000), long)
    with pytest.raises(ValueError):
        fit_length(np.zeros(0, dtype=np.float32), 10)


def _clicks(seconds: float, rate: int, at_seconds: list[float]) -> np.ndarray:
    audio = np.zeros(int(round(seconds * rate)), dtype=np.float32)
    for s in at_seconds:
        audio[int(round(s * rate))] = 0.9
    return audio


def _click_positions(clip: np.ndarray) -> np.ndarray:
    """Sample indices of clicks (resampling spreads each one over a few samples)."""
    env = np.abs(clip)
    peaks = np.flatnonzero(
        (env > 0.3 * env.max()) & (env >= np.roll(env, 1)) & (env >= np.roll(env, -1))
    )
    return peaks


def test_load_clip_repeat_pads_a_short_recording(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, _clicks(2.0, 44_100, [0.5]), 44_100)
    clip = load_clip(path, CFG)
    assert clip.shape == (CFG.clip_samples,)
    # 2 s tiled three times: the click comes back every 2 s (44,100 samples -> 44,100 / 2).
    expected = np.array([0.5, 2.5, 4.5]) * SR
    np.testing.assert_allclose(_click_positions(clip), expected, atol=2)


def test_load_clip_centre_trims_a_long_recording(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    sf.write(path, _clicks(10.0, 48_000, [1.0, 5.0]), 48_000)
    clip = load_clip(path, CFG)
    assert clip.shape == (CFG.clip_samples,)
    # The 10 s recording keeps 2.03 s .. 7.97 s: the click at 1 s is gone, 5 s is mid-clip.
    start = (10.0 - CFG.clip_seconds) / 2
    np.testing.assert_allclose(_click_positions(clip), [(5.0 - start) * SR], atol=2)
    db = LogMel(CFG, normalise=False)(torch.from_numpy(clip))[0, 0]
    frame = int(db.mean(dim=0).argmax())
    assert abs(frame - round((5.0 - start) * SR / CFG.hop_length)) <= 1


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_resample_keeps_frequency_and_duration(rate: int) -> None:
    t = np.arange(2 * rate) / rate
    out = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate, SR)
    assert out.dtype == np.float32
    assert abs(len(out) - 2 * SR) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert np.fft.rfftfreq(len(out), 1 / SR)[spectrum.argmax()] == pytest.approx(1000, abs=1)


def test_load_audio_mixes_channels_to_mono(tmp_path: Path) -> None:
    left = np.full(1000, 0.5, dtype=np.float32)
    right = np.full(1000, -0.25, dtype=np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    audio, rate = load_audio(path)
    assert rate == 16_000 and audio.shape == (1000,) and audio.dtype == np.float32
    np.testing.assert_allclose(audio, 0.125)


def test_load_audio_names_the_broken_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC this is not really a flac stream" * 10)
    silent = tmp_path / "no_frames.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), 16_000)
    for path in (missing, empty, corrupt, silent):
        with pytest.raises(AudioLoadError) as info:
            load_audio(path)
        assert path.name in str(info.value)
        assert isinstance(info.value, ValueError)
