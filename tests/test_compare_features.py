"""The 36 handcrafted features: known values on synthetic signals, caching next to the mel cache."""

from __future__ import annotations

import numpy as np
import pytest

from claudio_daemon.features.frontend import FrontEndConfig
from training.cache import Cache, precache
from training.compare.handcrafted import (
    FEATURE_NAMES,
    FEATURES_FILE,
    FRAME_FEATURES,
    HandcraftedExtractor,
    clip_features,
    load_or_compute,
)
from training.compare.toy import make_toy_esc50
from training.datasets import load_dataset

CFG = FrontEndConfig()
SR = CFG.sample_rate
N = CFG.clip_samples


def col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def test_names_are_36_means_then_stds() -> None:
    assert len(FRAME_FEATURES) == 18
    assert len(FEATURE_NAMES) == 36 == len(set(FEATURE_NAMES))
    assert FEATURE_NAMES[:18] == tuple(f"{n}_mean" for n in FRAME_FEATURES)
    assert FEATURE_NAMES[18:] == tuple(f"{n}_std" for n in FRAME_FEATURES)


def test_tone_features_match_their_definitions() -> None:
    t = np.arange(N) / SR
    amp, freq = 0.5, 1000.0
    f = clip_features(amp * np.sin(2 * np.pi * freq * t))
    assert f.shape == (36,)
    assert f[col("rms_db_mean")] == pytest.approx(10 * np.log10(amp**2 / 2), abs=0.2)
    assert f[col("rms_db_std")] < 0.2  # a steady tone is equally loud in every frame
    assert f[col("spectral_centroid_mean")] == pytest.approx(freq, rel=0.02)
    assert f[col("spectral_rolloff_mean")] == pytest.approx(freq, rel=0.05)
    assert f[col("spectral_bandwidth_mean")] < 100.0
    assert f[col("spectral_flatness_mean")] < 1e-3
    assert f[col("zero_crossing_rate_mean")] == pytest.approx(2 * freq / SR, rel=0.02)


def test_noise_is_flat_and_bright_and_silence_is_finite() -> None:
    noise = np.random.default_rng(0).normal(0, 0.1, N)
    f = clip_features(noise)
    assert 0.4 < f[col("spectral_flatness_mean")] < 0.7  # white noise: e^-gamma ~ 0.56
    assert f[col("spectral_centroid_mean")] == pytest.approx(SR / 4, rel=0.05)
    assert f[col("zero_crossing_rate_mean")] == pytest.approx(0.5, abs=0.03)
    silent = clip_features(np.zeros(N))
    assert np.all(np.isfinite(silent))
    assert silent[col("spectral_centroid_mean")] == 0.0


def test_batch_equals_one_by_one() -> None:
    import torch

    rng = np.random.default_rng(1)
    clips = rng.normal(0, 0.05, (2, N)).astype(np.float32)
    clips[1] += 0.3 * np.sin(2 * np.pi * 440 * np.arange(N) / SR).astype(np.float32)
    with torch.inference_mode():
        batch = HandcraftedExtractor(CFG)(torch.from_numpy(clips)).numpy()
    for i in range(2):
        np.testing.assert_allclose(batch[i], clip_features(clips[i]), rtol=1e-4, atol=1e-4)


def test_features_are_cached_next_to_the_mels(tmp_path) -> None:
    root = make_toy_esc50(tmp_path / "data", per_class_per_fold=2, folds=1)
    precache(load_dataset(root), tmp_path / "cache", CFG, workers=0, progress=False)
    cache = Cache.open(tmp_path / "cache")
    feats, seconds = load_or_compute(cache, workers=0)
    assert feats.shape == (len(cache), 36) and seconds > 0
    assert np.all(np.isfinite(feats))
    assert (tmp_path / "cache" / FEATURES_FILE).is_file()
    again, seconds2 = load_or_compute(cache, workers=0)
    assert seconds2 == 0.0
    np.testing.assert_array_equal(again, feats)
    # The tone clips (label "tone") are far less flat than the noise clips.
    flat = feats[:, col("spectral_flatness_mean")]
    labels = [item.labels[0] for item in cache.items]
    tones = [f for f, lab in zip(flat, labels, strict=True) if lab == "tone"]
    noise = [f for f, lab in zip(flat, labels, strict=True) if lab == "noise"]
    assert max(tones) < min(noise)
    # A stale file (other fingerprint) is recomputed, not trusted.
    np.savez(
        tmp_path / "cache" / FEATURES_FILE,
        features=np.zeros_like(feats),
        names=np.array(FEATURE_NAMES),
        fingerprint=np.array("something else"),
    )
    fresh, seconds3 = load_or_compute(cache, workers=0)
    assert seconds3 > 0
    np.testing.assert_allclose(fresh, feats, rtol=1e-5, atol=1e-5)
