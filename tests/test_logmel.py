"""The numpy front end against torchaudio/training, and the streaming twin against the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from claudio_daemon.audio.io import read_audio
from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.features.logmel import (
    StreamingLogMel,
    clip_power_mel,
    fit_clip,
    logmel_clip,
    mel_filterbank,
    power_to_db,
)

CFG = FrontEndConfig().with_stats(-42.0, 17.0)


def _clip(shared: Path, sub: str, ext: str, index: int = 0) -> np.ndarray:
    path = sorted((shared / sub / "audio").glob(f"*.{ext}"))[index]
    audio, rate = read_audio(path)
    return soxr.resample(audio, rate, CFG.sample_rate).astype(np.float32)


@pytest.fixture(scope="module")
def real_clip(shared_data: Path) -> np.ndarray:
    # clapping from fold 4 (44.1 kHz WAV), a clearly non-stationary sound
    return _clip(shared_data, "esc50-fold4-dev", "wav", 0)


def test_fit_clip_tiles_and_centre_trims() -> None:
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(fit_clip(x, 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(fit_clip(np.arange(10), 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_clip(x, 5), x)
    assert fit_clip(x, 5) is not x and fit_clip(x, 3).dtype == np.float32
    with pytest.raises(ValueError):
        fit_clip(np.zeros(0), 10)


def test_filterbank_matches_torchaudio() -> None:
    torchaudio = pytest.importorskip("torchaudio")
    ours = mel_filterbank(CFG)
    ref = torchaudio.functional.melscale_fbanks(
        CFG.n_fft // 2 + 1,
        CFG.f_min,
        CFG.f_max,
        CFG.n_mels,
        CFG.sample_rate,
        norm=None,
        mel_scale="htk",
    ).numpy()
    assert ours.shape == ref.shape == (1025, 128) and ours.dtype == np.float32
    # torch's float32 pow is not correctly rounded, so a handful of weights sit a few
    # 1e-6 apart; everything else is bit-identical.
    assert np.abs(ours - ref).max() < 1e-5
    assert np.mean(ours == ref) > 0.999


def _torch_reference(clips: list[np.ndarray]) -> np.ndarray:
    """The training front end (training.frontend.LogMel) on the same clips."""
    torch = pytest.importorskip("torch")
    from training.frontend import LogMel

    wave = torch.from_numpy(np.stack([fit_clip(c, CFG.clip_samples) for c in clips]))
    with torch.no_grad():
        return LogMel(CFG, normalise=True)(wave).numpy()[:, 0]


def test_logmel_clip_matches_training(shared_data: Path) -> None:
    rng = np.random.default_rng(0)
    clips = [
        _clip(shared_data, "esc50-fold4-dev", "wav", 0),
        _clip(shared_data, "esc50-fold4-dev", "wav", 7),
        _clip(shared_data, "esc50-16k-folds123", "flac", 3),
        (0.05 * rng.standard_normal(40000)).astype(np.float32),  # short: gets tiled
        (0.3 * rng.standard_normal(200000)).astype(np.float32),  # long: centre-trimmed
    ]
    ref = _torch_reference(clips)
    for clip, r in zip(clips, ref, strict=True):
        ours = logmel_clip(clip, CFG)
        assert ours.shape == (128, 256) and ours.dtype == np.float32
        assert np.abs(ours - r).max() * CFG.std < 1e-3  # in dB


def test_power_to_db_clamps_at_top_db() -> None:
    p = np.array([[1.0, 1e-3, 1e-12, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(power_to_db(p, CFG), [[0.0, -30.0, -80.0, -80.0]], atol=1e-5)
    np.testing.assert_allclose(
        power_to_db(p, CFG, top=-20.0), [[0.0, -30.0, -100.0, -100.0]], atol=1e-5
    )


def _stream(audio: np.ndarray, sizes) -> StreamingLogMel:
    s = StreamingLogMel(CFG)
    pos = 0
    for n in sizes:
        if pos >= audio.size:
            break
        s.push(audio[pos : pos + n])
        pos += n
    s.push(audio[pos:])
    return s


def _chunks(n: int):
    while True:
        yield n


def test_streaming_is_chunk_size_independent(real_clip: np.ndarray) -> None:
    audio = np.concatenate([real_clip, real_clip[:30000]])  # > one window: the ring wraps
    ref = _stream(audio, _chunks(audio.size))
    assert ref.frames_total == (audio.size - CFG.n_fft) // CFG.hop_length + 1
    ref_window = ref.window()
    assert ref_window.shape == (1, 1, 128, 256) and ref_window.dtype == np.float32
    rng = np.random.default_rng(1)
    for sizes in (
        _chunks(100),
        _chunks(512),
        _chunks(1024),
        _chunks(1280),
        _chunks(2560),
        _chunks(4096),
        iter(rng.integers(1, 5000, size=1000)),
    ):
        s = _stream(audio, sizes)
        assert s.frames_total == ref.frames_total
        assert s.window_end_sample == ref.window_end_sample
        np.testing.assert_allclose(s.window(), ref_window, atol=1e-6)
    tail = audio[-40000:]  # one sample at a time is slow in Python: a shorter stretch
    ones = _stream(tail, _chunks(1))
    np.testing.assert_allclose(ones.window(), _stream(tail, _chunks(tail.size)).window(), atol=1e-6)


def test_streaming_interior_equals_batch(real_clip: np.ndarray) -> None:
    """Streaming frame k == clip frame k+2 (centre padding is 2 hops); only edges differ."""
    clip = fit_clip(real_clip, CFG.clip_samples)
    s = StreamingLogMel(CFG)
    s.push(clip)
    n = s.frames_total
    assert n == CFG.n_frames - 4
    assert s.window_end_sample == (n - 1) * CFG.hop_length + CFG.n_fft
    stream_p = s.power_window()[:, -n:]
    batch_p = clip_power_mel(clip, CFG)
    np.testing.assert_allclose(stream_p, batch_p[:, 2 : 2 + n], rtol=1e-5, atol=1e-9)
    top = float(power_to_db(batch_p, CFG).max())  # the same dB reference for both
    db_stream = power_to_db(stream_p, CFG, top=top)
    db_batch = power_to_db(batch_p[:, 2 : 2 + n], CFG, top=top)
    assert np.abs(db_stream - db_batch).max() < 1e-3
    # The window's oldest 4 frames are not there yet: they sit at the clamp floor.
    w = s.window()[0, 0] * CFG.std + CFG.mean
    np.testing.assert_allclose(w[:, :4], w.max() - CFG.top_db, atol=1e-3)


def test_streaming_reset_and_window_clamp_follows_window() -> None:
    rng = np.random.default_rng(2)
    quiet = (1e-6 * rng.standard_normal(CFG.clip_samples + 20000)).astype(np.float32)
    bang = quiet.copy()
    bang[60000:60400] += 0.5 * rng.standard_normal(400).astype(np.float32)
    s = StreamingLogMel(CFG)
    s.push(bang)
    w_bang = s.window()[0, 0]
    # Quiet frames are > 80 dB below the bang: clamped flat to the window's floor.
    assert np.ptp(w_bang[:, -100:]) < 1e-6
    s.reset()
    assert s.frames_total == 0 and s.window_end_sample == 0
    assert s.push(quiet) == StreamingLogMel(CFG).push(quiet)
    s.reset()
    s.push(bang)
    s.push(quiet[:70000])  # the bang scrolls out of the window
    w_after = s.window()[0, 0]
    # Now the clamp is relative to the quiet window: its texture is visible again.
    assert np.ptp(w_after[:, -100:]) * CFG.std > 10
    fresh = StreamingLogMel(CFG)
    fresh.push(bang[156 * CFG.hop_length :])  # hop-aligned, starts after the bang
    fresh.push(quiet[:70000])
    assert fresh.window_end_sample != s.window_end_sample
    np.testing.assert_allclose(fresh.window()[0, 0], w_after, atol=1e-6)
