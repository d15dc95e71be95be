"""The clap detector on real ESC-50 recordings mixed into scenes (skips without the data).

Bars are set from measured results on this scene set (seed 0), with a small margin.
Steady backgrounds (rain, vacuum, washing machine) are the strict test; impulsive ones
(typing, clock ticks) are harder and are measured by the clap benchmark.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.scenes import (
    EVENT_PRE,
    clap_shaped,
    cut_events,
    cut_single_claps,
    esc50_clips,
    load_backgrounds,
    load_clip,
    make_applause_scene,
    make_clip_scene,
    make_pattern_scene,
)
from claudio_daemon.detect.listener import ClapListener
from claudio_daemon.detect.settings import ClapSettings
from training.synth_claps import burst_at_onset, peak_window_db

SR = 22050
STEADY = ("rain", "vacuum_cleaner", "washing_machine")
PER_N = 12


@pytest.fixture(scope="session")
def roots(shared_data):
    return [shared_data / "esc50-16k-folds123", shared_data / "esc50-fold4-dev"]


@pytest.fixture(scope="session")
def bank(roots):
    return {
        "claps": cut_single_claps(roots),
        "knocks": cut_events(roots, "door_wood_knock"),
        "bg": load_backgrounds(roots, STEADY, per_category=3),
    }


def patterns(audio: np.ndarray, max_count: int = 4):
    return ClapListener(ClapSettings(), SR, max_count).push(audio)


@pytest.fixture(scope="session")
def clap_results(bank):
    rng = np.random.default_rng(0)
    rows = []
    for snr in (20.0, 10.0):
        for n in (1, 2, 3, 4):
            for _ in range(PER_N):
                bg = bank["bg"][int(rng.integers(len(bank["bg"])))]
                gaps = list(rng.uniform(0.2, 0.7, size=n - 1))
                sc = make_pattern_scene(bank["claps"], n, gaps, bg, snr, rng)
                rows.append((sc, patterns(sc.audio)))
    return rows


def test_cut_claps_start_at_their_onset(bank) -> None:
    assert len(bank["claps"]) >= 10 and len(bank["knocks"]) >= 10
    assert all(len(c) == int(0.22 * SR) for c in bank["claps"])


@pytest.mark.parametrize("snr", [20.0, 10.0])
def test_exact_counts_on_real_claps(clap_results, snr) -> None:
    # Measured (seed 0) with claps cut without the detector's shape test: 20 dB
    # 12/12/12/12, 10 dB 11/12/12/12 for N = 1..4 (before the precursor-aware onset
    # finder and the 6 dB level range: 11/12/11/10 and 10/9/12/8).
    total = 0
    for n in (1, 2, 3, 4):
        rows = [(sc, ps) for sc, ps in clap_results if sc.snr_db == snr and sc.count == n]
        exact = sum(len(ps) == 1 and ps[0].count == n for _, ps in rows)
        assert exact >= 10, (n, snr, exact)
        total += exact
    assert total >= 45, (snr, total)


def test_two_and_three_hardly_ever_confused(clap_results) -> None:
    confused = 0
    for sc, ps in clap_results:
        if sc.count in (2, 3):
            wrong = {2: 3, 3: 2}[sc.count]
            confused += any(p.count == wrong for p in ps)
    # Measured: 0 of 48 (1 before the 6 dB level range: a quiet third clap lost in a
    # vacuum cleaner).
    assert confused == 0


def test_clap_times_within_10_ms(clap_results) -> None:
    errors = []
    for sc, ps in clap_results:
        if len(ps) == 1 and ps[0].count == sc.count:
            errors += list(np.subtract(ps[0].clap_samples, sc.clap_samples) / SR * 1000)
    errors = np.abs(errors)
    assert len(errors) > 100
    assert np.median(errors) < 2.0
    # Measured 0.90: some real claps start with a weak contact click that noise hides, so
    # the onset found is the main burst ~20-40 ms later (the count is still right).
    assert np.mean(errors <= 10.0) >= 0.85


@pytest.fixture(scope="session")
def shipped_classify():
    """The shipped model's scores, as the daemon's ClapListener asks for them."""
    from claudio_daemon.app import shipped_model
    from claudio_daemon.model.classifier import OnnxClassifier

    path = shipped_model()
    if path is None:
        pytest.skip("no shipped model in models/")
    return OnnxClassifier(path, device="cpu", threads=1).classify_audio


def test_knocks_footsteps_speech_give_no_command(bank, roots, shipped_classify) -> None:
    """Through the detector and the shipped model's veto, as in the daemon."""
    rng = np.random.default_rng(1)
    scenes = []
    for i in range(12):
        n = 2 + i % 2
        gaps = list(rng.uniform(0.2, 0.7, size=n - 1))
        bg = bank["bg"][i % len(bank["bg"])]
        scenes.append(make_pattern_scene(bank["knocks"], n, gaps, bg, 20.0, rng, kind="knock"))
    for cat in ("footsteps", "laughing", "coughing"):
        clips = esc50_clips(roots, cat)
        for i in range(8):
            clip = load_clip(clips[int(rng.integers(len(clips)))])
            scenes.append(make_clip_scene(clip, cat, bank["bg"][i % len(bank["bg"])], 20.0, rng))

    def commands(audio: np.ndarray) -> bool:
        listener = ClapListener(ClapSettings(), SR, 3, classify=shipped_classify)
        return any(p.count in (2, 3) for p in listener.push(audio))

    false = [sc.kind for sc in scenes if commands(sc.audio)]
    # Measured with the shipped model: footsteps 1/8, coughing 1/8, no knock or laughter
    # (the model before isolated-clap training: laughing 1/8, coughing 1/8). The
    # benchmark's larger distractor set shows the remaining rate per hour.
    assert "knock" not in false, false
    assert len(false) <= 3, false


def test_a_keystroke_among_the_claps_is_not_counted(bank, roots, shipped_classify) -> None:
    """Three claps over typing with one keystroke as loud as they are between two of them:
    the detector hears four, the shipped model, asked about each clap on its own, three."""
    keys = [k for k in cut_events(roots, "keyboard_typing") if clap_shaped(k)]
    typing = load_backgrounds(roots, ("keyboard_typing",), per_category=8)
    rng = np.random.default_rng(0)
    counts: dict[float, list[tuple[int, ...]]] = {0.0: [], 0.05: []}
    for i in range(16):
        sc = make_pattern_scene(bank["claps"], 3, [0.5, 0.5], typing[i % len(typing)], 10.0, rng)
        x = sc.audio.copy()
        key = keys[i % len(keys)]
        at = sc.clap_samples[i % 2] + int(0.25 * SR) - EVENT_PRE
        x[at : at + len(key)] += key * np.float32(10 ** ((-22.0 - peak_window_db(key)) / 20))
        x = np.concatenate([x, np.zeros(SR, np.float32)])
        for each in counts:
            settings = ClapSettings(min_single_clap_score=each)
            listener = ClapListener(settings, SR, 4, classify=shipped_classify)
            counts[each].append(tuple(p.count for p in listener.push(x)))
    # Measured: four "claps" in 14 of 16 scenes without the check of each clap (none in 2);
    # with it, 7 exact three-clap commands and 7 fours (that keystroke scored above 0.05 as
    # a clap on its own; 0.1 counted 12 right, but costs real claps on the benchmark). The
    # 200-epoch model once leaves a four and then a single clap (no command either).
    assert counts[0.0].count((3,)) <= 1 and counts[0.0].count((4,)) >= 12, repr(counts[0.0])
    assert counts[0.05].count((3,)) >= 6, counts[0.05]
    # Never a wrong command: no scene turns three claps and a keystroke into a 2-clap one.
    assert all(set(c) <= {1, 3, 4} and c.count(3) + c.count(4) <= 1 for c in counts[0.05]), repr(
        counts[0.05]
    )


def test_applause_is_not_a_command(bank) -> None:
    rng = np.random.default_rng(2)
    fired = 0
    for i in range(8):
        sc = make_applause_scene(bank["claps"], bank["bg"][i % len(bank["bg"])], 20.0, rng)
        fired += any(p.count in (2, 3) for p in patterns(sc.audio, 3))
    assert fired <= 1


def test_a_cut_whose_loud_clap_comes_after_a_precursor_is_not_a_single_clap() -> None:
    rng = np.random.default_rng(0)
    n = int(0.22 * SR)
    t = np.arange(n) / SR

    def burst(at_s: float, level: float) -> np.ndarray:
        on = np.clip((t - at_s) / 0.001, 0.0, 1.0) * (t >= at_s)
        return level * on * np.exp(-np.maximum(t - at_s, 0) / 0.015) * rng.standard_normal(n)

    onset_s = EVENT_PRE / SR
    assert burst_at_onset(burst(onset_s, 0.3), EVENT_PRE)
    # A faint neighbour's clap at the onset, the loud one 70 ms later (applause recordings).
    assert not burst_at_onset(burst(onset_s, 0.05) + burst(onset_s + 0.07, 0.3), EVENT_PRE)
