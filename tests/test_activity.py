"""ActivityGate: level against an adaptive noise floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from claudio_daemon.audio.io import read_audio
from claudio_daemon.detect.activity import SILENCE_DB, ActivityGate, GateReading, level_db

RATE = 22050


def _noise(seconds: float, db: float, seed: int = 0) -> np.ndarray:
    """White noise with RMS level `db` dBFS."""
    x = np.random.default_rng(seed).standard_normal(int(RATE * seconds))
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (db / 20)).astype(np.float32)


def _clap(db_peak_rms: float, seed: int = 1) -> np.ndarray:
    """A 50 ms decaying noise burst."""
    n = int(0.05 * RATE)
    x = np.random.default_rng(seed).standard_normal(n) * np.exp(-np.arange(n) / (0.01 * RATE))
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (db_peak_rms / 20)).astype(np.float32)


def test_level_db() -> None:
    t = np.arange(RATE) / RATE
    assert level_db(np.sin(2 * np.pi * 440 * t)) == pytest.approx(-3.01, abs=0.01)
    assert level_db(0.1 * np.sin(2 * np.pi * 440 * t)) == pytest.approx(-23.01, abs=0.01)
    assert level_db(np.zeros(100)) == SILENCE_DB == level_db(np.zeros(0))
    assert level_db(np.full(10, 1e-9)) == SILENCE_DB  # clamped, stays finite


def test_fan_becomes_the_floor_and_claps_open_the_gate() -> None:
    gate = ActivityGate(RATE, initial_floor_db=-70.0)
    fan = _noise(30.0, -50.0)
    readings = gate.push(fan[: 20 * RATE])
    assert len(readings) == 200 and all(isinstance(r, GateReading) for r in readings)
    assert readings[0].active  # a new fan is "activity" at first...
    # Rise time constant 10 s: 20 dB closes to within the 6 dB margin after ~12 s.
    assert -54.0 < readings[-1].noise_floor_db < -50.0
    assert not any(r.active for r in readings[-50:])  # ...then it is just the room
    room = fan[20 * RATE :].copy()
    at = int(2.0 * RATE)
    room[at : at + _clap(-20).size] += _clap(-20)
    readings = gate.push(room)
    active = [r for r in readings if r.active]
    assert active, "a clap 30 dB above the fan must open the gate"
    first = active[0].end_sample - 20 * RATE
    assert at <= first <= at + int(0.15 * RATE)
    # The gate holds for the 1 s hangover, then closes; the clap barely moved the floor.
    assert sum(r.active for r in readings) == pytest.approx(11, abs=1)
    assert readings[-1].noise_floor_db == pytest.approx(-50.0, abs=2.5)
    assert not gate.active
    ends = [r.end_sample for r in readings]
    assert ends == list(range(ends[0], ends[0] + 2205 * len(ends), 2205))


def test_floor_falls_fast_and_rises_slowly() -> None:
    gate = ActivityGate(RATE, floor_adapt_s=10.0)
    loud = gate.push(_noise(5.0, -30.0))
    assert loud[0].noise_floor_db == pytest.approx(-30.0, abs=0.2)  # first window = floor
    quiet = gate.push(_noise(3.0, -70.0, seed=5))
    assert quiet[20].noise_floor_db < -65  # ~2 s later the floor is down
    # A steady new noise 20 dB above the floor keeps the gate open for a while, then not.
    louder = gate.push(_noise(40.0, -50.0, seed=6))
    open_for = sum(r.active for r in louder) * 0.1
    assert 5.0 < open_for < 25.0
    assert not louder[-1].active


def test_min_level_keeps_a_silent_room_closed() -> None:
    gate = ActivityGate(RATE, initial_floor_db=-100.0, min_level_db=-60.0)
    readings = gate.push(_noise(1.0, -75.0))  # 25 dB above the floor, but below -60 dBFS
    assert not any(r.active for r in readings)
    readings = gate.push(_noise(0.2, -40.0))
    assert all(r.active for r in readings)


def test_chunk_size_independent() -> None:
    audio = np.concatenate([_noise(3.0, -55.0), _clap(-15), _noise(2.0, -55.0, seed=2)])
    ref = ActivityGate(RATE).push(audio)
    rng = np.random.default_rng(7)
    for sizes in (
        [1] * 30000,
        [100] * 2000,
        [1024] * 200,
        [4096] * 50,
        list(rng.integers(1, 6000, 200)),
    ):
        gate = ActivityGate(RATE)
        got, pos = [], 0
        for n in sizes:
            got += gate.push(audio[pos : pos + n])
            pos += n
        got += gate.push(audio[pos:])
        assert got == ref
        assert gate.samples_seen == audio.size


def test_reset_and_validation() -> None:
    gate = ActivityGate(RATE, initial_floor_db=-80.0)
    gate.push(_noise(1.0, -20.0))
    assert gate.active
    gate.reset()
    assert (gate.active, gate.noise_floor_db, gate.samples_seen) == (False, -80.0, 0)
    with pytest.raises(ValueError):
        ActivityGate(RATE, window_s=0)


def test_real_recording(shared_data: Path) -> None:
    path = sorted((shared_data / "esc50-fold4-dev" / "audio").glob("*-30.wav"))[0]  # door knock
    audio, rate = read_audio(path)
    readings = ActivityGate(RATE, initial_floor_db=-70.0).push(soxr.resample(audio, rate, RATE))
    assert len(readings) == 50
    assert any(r.active for r in readings)
    assert max(r.level_db for r in readings) > -40
