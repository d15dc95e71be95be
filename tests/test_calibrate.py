"""`claudio-daemon calibrate`: real ESC-50 rain and claps, the real CLI, a real PulseAudio mic."""

from __future__ import annotations

import io
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.scenes import (
    EVENT_PRE,
    SAMPLE_RATE,
    clap_shaped,
    cut_single_claps,
    esc50_clips,
    load_backgrounds,
    load_clip,
    make_pattern_scene,
)
from claudio_daemon.calibrate.measure import ClapReport, NoiseReport, analyse, propose
from claudio_daemon.calibrate.model import apply_calibration, load_calibration
from claudio_daemon.calibrate.session import (
    CalibrateOptions,
    CalibrationFailed,
    Result,
    run_calibration,
)
from claudio_daemon.detect.claps import HOP, ClapCandidate, ClapDetector, highpass_fir
from claudio_daemon.detect.settings import ClapSettings
from tests.fixtures.pulse import PulseServer

ROOT = Path(__file__).resolve().parents[1]
NOISE_S = 3.0
GAPS = (0.5, 0.55, 0.45)


@dataclass(frozen=True)
class Recording:
    audio: np.ndarray
    clap_samples: tuple[int, ...]
    path: Path
    background_path: Path
    #: RMS level (dBFS) of the high-passed background phase.
    bg_level_db: float
    #: 99.5th percentile of the background's per-frame levels (dBFS, high-passed).
    bg_frame_p995_db: float
    #: Median clap level (dBFS) measured like the detector: loudest 20 ms of the high-passed clap.
    clap_level_db: float


def _db(power: float) -> float:
    return float(10 * np.log10(max(power, 1e-12)))


def _energy_cut_claps(root: Path) -> list[np.ndarray]:
    """Fallback cutter: the loudest 5 ms burst of each clapping clip, if it stands out."""
    n, out = int(0.005 * SAMPLE_RATE), []
    for path in esc50_clips(root, "clapping"):
        x = np.asarray(load_clip(path), np.float64)
        e = np.array([_db(np.mean(x[i : i + n] ** 2)) for i in range(0, len(x) - n, n)])
        peak = int(np.argmax(e))
        if e[peak] - np.median(e) < 25:
            continue
        j = peak
        while j > 0 and e[j - 1] > e[peak] - 20:
            j -= 1
        a = j * n - EVENT_PRE
        if a >= 0 and a + int(0.22 * SAMPLE_RATE) <= len(x):
            out.append(x[a : a + int(0.22 * SAMPLE_RATE)].astype(np.float32))
    return out


def _highpass(x: np.ndarray) -> np.ndarray:
    fir = highpass_fir(SAMPLE_RATE, ClapSettings().highpass_hz)
    return np.convolve(np.asarray(x, np.float64), fir, mode="same")


@pytest.fixture(scope="module")
def recording(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """3 s of real rain, then 4 real claps at ~0.5 s gaps, 20 dB above the rain."""
    root = shared_data / "esc50-16k-folds123"
    # A person calibrating claps like they will clap for the lamp: keep the cut claps that
    # have a clap's shape (the scene cutter keeps every isolated transient of the class).
    claps = [c for c in cut_single_claps(root) if clap_shaped(c)] or _energy_cut_claps(root)
    backgrounds = load_backgrounds(root, ["rain"], per_category=1)
    assert claps and backgrounds, "no usable clapping/rain recordings in ESC-50"
    rng = np.random.default_rng(0)
    scene = make_pattern_scene(
        claps, 4, list(GAPS), backgrounds[0], 20.0, rng, lead_s=NOISE_S, tail_s=2.0
    )
    tmp = tmp_path_factory.mktemp("calibrate")
    path = tmp / "claps.wav"
    sf.write(str(path), scene.audio, SAMPLE_RATE, subtype="FLOAT")
    n_noise = int(NOISE_S * SAMPLE_RATE)
    # A longer background-only recording: the same rain, no claps.
    bg_only = np.concatenate([scene.audio[: n_noise - 1000], scene.audio[1000 : n_noise - 1000]])
    background_path = tmp / "rain_only.wav"
    sf.write(str(background_path), bg_only, SAMPLE_RATE, subtype="FLOAT")
    hp = _highpass(scene.audio)
    bg = hp[int(0.5 * SAMPLE_RATE) : n_noise - 200]
    frames = bg[: bg.size // HOP * HOP].reshape(-1, HOP)
    win = int(0.02 * SAMPLE_RATE)
    clap_levels = []
    for t in scene.clap_samples:
        p = np.convolve(hp[t - 100 : t + 3 * win] ** 2, np.ones(win) / win, mode="valid")
        clap_levels.append(_db(p.max()))
    return Recording(
        audio=scene.audio,
        clap_samples=scene.clap_samples,
        path=path,
        background_path=background_path,
        bg_level_db=_db(np.mean(bg**2)),
        bg_frame_p995_db=float(np.percentile(10 * np.log10(np.mean(frames**2, axis=1)), 99.5)),
        clap_level_db=float(np.median(clap_levels)),
    )


@pytest.fixture()
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text("audio:\n  calibration: null\n")
    return path


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLAUDIO_RULES"}
    return subprocess.run(
        [sys.executable, "-m", "claudio_daemon", "calibrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check_calibration(out: Path, rec: Recording, stdout: str) -> None:
    cal = load_calibration(out)
    assert re.search(r"claps heard\s+4 of 4\b", stdout), stdout
    # The detector's floor sits a little below the background's RMS (it follows the quiet
    # moments between rain drops), within a few dB.
    assert rec.bg_level_db - 4.0 < cal.noise_floor_db <= rec.bg_level_db + 0.5
    assert abs(cal.clap_level_db - rec.clap_level_db) < 2.0
    # The threshold lies between the background's own rises and the claps.
    assert cal.noise_floor_db + cal.onset_threshold_db > rec.bg_frame_p995_db
    assert cal.noise_floor_db + cal.onset_threshold_db < cal.clap_level_db - 3.0
    assert 0.08 <= cal.min_gap_s < min(GAPS) <= max(GAPS) < cal.max_gap_s <= 2.0
    assert cal.end_silence_s >= cal.max_gap_s
    # The daemon's settings change, and the calibrated detector still hears exactly the
    # four claps and nothing in the rain before them.
    base = ClapSettings()
    tuned = apply_calibration(base, cal)
    assert tuned != base
    assert tuned.onset_threshold_db == pytest.approx(cal.onset_threshold_db)
    assert (tuned.min_gap_s, tuned.max_gap_s) == (cal.min_gap_s, cal.max_gap_s)
    found = [
        c
        for c in ClapDetector(tuned, SAMPLE_RATE).push(
            np.concatenate([rec.audio, np.zeros(SAMPLE_RATE, np.float32)])
        )
        if c.is_clap
    ]
    assert len(found) == 4
    for c, t in zip(found, rec.clap_samples, strict=True):
        assert abs(c.sample - t) < 0.01 * SAMPLE_RATE
    # How bright the claps are, for anyone setting claps.max_centroid_hz.
    bright = re.search(r"clap brightness\s+spectral centroid up to (\d+) Hz", stdout)
    # (Through a sound server the audio is resampled twice and timed anew: near it.)
    assert bright and int(bright[1]) == pytest.approx(max(c.centroid_hz for c in found), rel=0.15)


def test_calibrate_from_a_recording(recording: Recording, rules_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "state" / "cal.yaml"
    res = _cli(
        "--input", str(recording.path), "--yes", "--out", str(out), "--rules", str(rules_file)
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert f"wrote {out}" in res.stdout
    assert "audio.calibration to null" in res.stdout  # the rules would not read it: say so
    _check_calibration(out, recording, res.stdout)


def test_calibrate_never_overwrites_a_file_that_is_no_calibration(
    recording: Recording, tmp_path: Path
) -> None:
    """`--out` naming rules.yaml (or any other file) replaced it with calibration values:
    every appliance and trigger gone, and "wrote ..." printed."""
    rules = tmp_path / "rules.yaml"
    text = "audio:\n  calibration: null\nappliances:\n  lamp: {preset: tasmota, topic: lamp}\n"
    rules.write_text(text)

    def calibrate(out: Path) -> subprocess.CompletedProcess[str]:
        args = ("--input", str(recording.path), "--yes", "--out", str(out))
        return _cli(*args, "--rules", str(rules))

    res = calibrate(rules)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{rules}: is a rules file (appliances, audio), not a calibration" in res.stderr
    assert rules.read_text() == text
    # An earlier calibration is replaced, as asked; so is a broken one (the daemon refuses
    # to start on it, and calibrating again is the way out).
    out = tmp_path / "cal.yaml"
    for _ in range(2):
        res = calibrate(out)
        assert res.returncode == 0, res.stderr
    out.write_text("noise_floor_db: [\n")
    assert calibrate(out).returncode == 0 and "clap_level_db" in out.read_text()
    res = calibrate(tmp_path)
    assert res.returncode == 2 and "is a folder" in res.stderr


def test_no_claps_exit_1_and_nothing_written(
    recording: Recording, rules_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cal.yaml"
    res = _cli(
        "--input",
        str(recording.background_path),
        "--yes",
        "--out",
        str(out),
        "--rules",
        str(rules_file),
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no claps heard" in res.stderr and "closer" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() and not list(tmp_path.glob("cal.yaml*"))


def test_missing_microphone_is_one_clear_line(rules_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cal.yaml"
    res = _cli("--device", "no-such-mic", "--yes", "--out", str(out), "--rules", str(rules_file))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "no-such-mic" in lines[0]
    assert "available inputs" in lines[0] or "no input devices found" in lines[0]
    assert not out.exists()


def test_bad_input_file_and_non_interactive_without_yes(rules_file: Path, tmp_path: Path) -> None:
    res = _cli("--input", str(tmp_path / "nope.wav"), "--yes", "--rules", str(rules_file))
    assert res.returncode == 2 and "nope.wav" in res.stderr and "Traceback" not in res.stderr
    res = _cli("--input", str(tmp_path / "nope.wav"), "--rules", str(rules_file))
    assert res.returncode == 2 and "--yes" in res.stderr


def test_measurement_does_not_depend_on_block_size(recording: Recording) -> None:
    n = int(NOISE_S * SAMPLE_RATE)
    x = recording.audio
    results = []
    for block in (333, 4096):
        noise = [x[i : min(i + block, n)] for i in range(0, n, block)]
        claps = [x[i : i + block] for i in range(n, len(x), block)]
        results.append(analyse(noise, claps, ClapSettings(), SAMPLE_RATE, asked=4))
    (noise_a, claps_a), (noise_b, claps_b) = results
    assert noise_a == noise_b
    assert claps_a.claps == claps_b.claps and claps_a.count == 4


def _cand(sample: int, level: float) -> ClapCandidate:
    return ClapCandidate(sample, level, -60.0, 2.0, 30.0, 3000.0, 5.0, 12.0, 0.05, 0.95, True)


def test_proposal_logic_and_warnings() -> None:
    noise = NoiseReport(3.0, -60.0, -58.0, -50.0, 8.0, -30.0, 0, 0)
    claps = ClapReport(
        4, SAMPLE_RATE, 5.0, tuple(_cand(s, -25.0) for s in (0, 6615, 13230)), 0, -10.0
    )
    p = propose(noise, claps, ClapSettings(), device="mic", sample_rate=SAMPLE_RATE)
    # Halfway between 8 dB (background rises) and 35 dB (softest clap) is 21.5; the cap at
    # the softest clap minus 6 dB (29) does not bite.
    assert p.calibration.onset_threshold_db == pytest.approx(21.5)
    assert p.calibration.min_gap_s == pytest.approx(0.15)
    assert p.calibration.max_gap_s == pytest.approx(0.55)
    assert p.warnings == ("asked for 4 claps but heard 3",)
    # Claps the measurement heard (its level floor is off) but the daemon would not.
    quiet = ClapReport(2, SAMPLE_RATE, 5.0, (_cand(0, -50.0), _cand(6615, -48.0)), 0, -30.0)
    p = propose(
        NoiseReport(3.0, -80.0, -78.0, -70.0, 8.0, -50.0, 0, 0),
        quiet,
        ClapSettings(),
        device="mic",
        sample_rate=SAMPLE_RATE,
    )
    assert any(
        "softest clap (-50.0 dBFS) is below claps.min_level_db (-45 dBFS)" in w for w in p.warnings
    ), p.warnings
    # Claps barely above a loud, clipping background: the background wins, with warnings.
    loud = NoiseReport(3.0, -25.0, -23.0, -20.0, 9.0, 0.0, 2, 1)
    weak = ClapReport(1, SAMPLE_RATE, 5.0, (_cand(0, -15.0),), 0, -3.0)
    p = propose(loud, weak, ClapSettings(), device="mic", sample_rate=SAMPLE_RATE)
    assert p.calibration.onset_threshold_db == pytest.approx(11.0)  # 9 + 2, above 10 - 6
    assert (p.calibration.min_gap_s, p.calibration.max_gap_s) == (0.15, 0.9)  # kept
    # ...and so is the end silence (it was reset to max_gap_s).
    slow = ClapSettings(end_silence_s=1.5)
    p1 = propose(loud, weak, slow, device="mic", sample_rate=SAMPLE_RATE)
    assert p1.calibration.end_silence_s == 1.5
    text = " ".join(p.warnings)
    for part in ("too noisy", "loud", "clipped", "clap-like"):
        assert part in text
    with pytest.raises(ValueError, match="no claps"):
        propose(
            noise,
            ClapReport(4, SAMPLE_RATE, 5.0, (), 3, -10.0),
            ClapSettings(),
            device="mic",
            sample_rate=SAMPLE_RATE,
        )


def test_live_calibration_through_pulseaudio(
    pulse_server: PulseServer, recording: Recording, rules_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "live.yaml"
    env = {k: v for k, v in os.environ.items() if k != "CLAUDIO_RULES"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claudio_daemon",
            "calibrate",
            "--device",
            pulse_server.portaudio_device,
            "--yes",
            "--out",
            str(out),
            "--rules",
            str(rules_file),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    err_lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            lines.put(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    player = None
    try:
        while True:
            line = lines.get(timeout=15)
            if "keep quiet" in line:
                break
        player = pulse_server.play(recording.path, wait=False)
        stdout, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if player is not None and player.poll() is None:
            player.kill()
            player.wait()
    reader.join(timeout=5)
    assert proc.returncode == 0, "".join(err_lines)
    assert "Listening on" in "".join(err_lines) and "pulse" in "".join(err_lines)
    _check_calibration(out, recording, stdout)
    assert load_calibration(out).device == "pulse"


def test_audio_lost_while_measuring_fails_the_calibration(
    pulse_server: PulseServer,  # noqa: F811
) -> None:
    """A hole in the audio (a driver overflow, as PortAudio reports one, into a real
    stream) would time the claps either side of it as adjacent and propose gaps from that:
    the calibration stops, says why, and writes nothing."""
    import sounddevice as sd

    from claudio_daemon.audio.source import MicSource
    from claudio_daemon.calibrate.session import LevelMeter, _measure

    mic = MicSource("pulse", SAMPLE_RATE, native_rate=48000)
    err = io.StringIO()

    def overflow_once_listening() -> None:
        deadline = time.monotonic() + 20
        while "keep quiet" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        chunk = np.zeros((480, 1), dtype=np.float32)
        mic._callback(chunk, chunk.shape[0], None, sd.CallbackFlags(2))  # paInputOverflow

    th = threading.Thread(target=overflow_once_listening, daemon=True)
    th.start()
    opts = CalibrateOptions(noise_seconds=3.0, clap_seconds=5.0)
    meter = LevelMeter(err, enabled=False)
    with pytest.raises(CalibrationFailed, match="pulse: audio was lost while measuring") as exc:
        _measure(mic, ClapSettings(), opts, err, meter, "pulse")
    th.join(timeout=5)
    assert exc.value.code == 1 and "run calibrate again" in str(exc.value)


@pytest.fixture(scope="module")
def claps_and_rain(shared_data: Path) -> tuple[list[np.ndarray], np.ndarray]:
    root = shared_data / "esc50-16k-folds123"
    claps = [c for c in cut_single_claps(root) if clap_shaped(c)] or _energy_cut_claps(root)
    return claps, load_backgrounds(root, ["rain"], per_category=1)[0]


def _calibrate_scene(
    tmp_path: Path, rules_file: Path, audio: np.ndarray
) -> tuple[Result | CalibrationFailed, str]:
    wav = tmp_path / "scene.wav"
    sf.write(str(wav), audio, SAMPLE_RATE, subtype="FLOAT")
    opts = CalibrateOptions(rules=rules_file, input_file=wav, yes=True, out=tmp_path / "c.yaml")
    out, err = io.StringIO(), io.StringIO()
    try:
        return run_calibration(opts, out=out, err=err, stdin_interactive=False), err.getvalue()
    except CalibrationFailed as exc:
        return exc, err.getvalue()


def test_one_early_clap_in_the_quiet_phase_does_not_hide_the_claps(
    claps_and_rain: tuple[list[np.ndarray], np.ndarray], rules_file: Path, tmp_path: Path
) -> None:
    # The user claps once at 2.3 s, before the "Now clap" prompt at 3 s, then 4 times: the
    # early clap, as loud as the others, used to set the bar they had to clear (+3 dB), so
    # all 4 were rejected with "clap closer and louder, check the gain".
    claps, rain = claps_and_rain
    scene = make_pattern_scene(
        claps, 5, [1.2, *GAPS], rain, 20.0, np.random.default_rng(0), lead_s=2.3, tail_s=2.0
    )
    result, err = _calibrate_scene(tmp_path, rules_file, scene.audio)
    assert isinstance(result, Result), result
    assert result.noise.early_claps == 1
    assert result.claps.count == 4
    found = [c.sample for c in result.claps.claps]
    for got, want in zip(found, scene.clap_samples[1:], strict=True):
        assert abs(got - want) < 0.01 * SAMPLE_RATE
    # The room's own level is still what the threshold is set against, and the user is
    # told why the measurement had to skip a sound.
    cal = result.proposal.calibration
    assert cal.noise_floor_db + cal.onset_threshold_db < cal.clap_level_db - 3.0
    assert result.noise.clap_bar_db < cal.clap_level_db - 10.0
    assert "keep quiet until you are prompted" in err and "before the prompt" in err


def test_claps_no_louder_than_the_quiet_phase_get_quiet_phase_advice(
    claps_and_rain: tuple[list[np.ndarray], np.ndarray], rules_file: Path, tmp_path: Path
) -> None:
    # Clapping through the whole quiet phase (more than MAX_EARLY_CLAPS sounds, like a
    # loud clock) still raises the bar, so the later claps, no louder, are not counted;
    # the advice names the quiet phase, not the microphone's gain.
    claps, rain = claps_and_rain
    gaps = [0.6, 0.6, 0.6, 1.0, *GAPS]
    scene = make_pattern_scene(
        claps, 8, gaps, rain, 20.0, np.random.default_rng(1), lead_s=0.9, tail_s=2.0
    )
    result, _ = _calibrate_scene(tmp_path, rules_file, scene.audio)
    assert isinstance(result, CalibrationFailed), result
    msg = str(result)
    assert result.code == 1
    assert "keep quiet until you are prompted" in msg and "quiet background phase" in msg
    assert not re.search(r"\b(gain|closer)\b", msg), msg


def test_early_clap_warning_in_the_proposal() -> None:
    noise = NoiseReport(3.0, -60.0, -58.0, -50.0, 8.0, -30.0, 3, 2, early_claps=1)
    claps = ClapReport(
        4, SAMPLE_RATE, 5.0, tuple(_cand(s, -25.0) for s in (0, 6615, 13230, 19845)), 0, -10.0
    )
    p = propose(noise, claps, ClapSettings(), device="mic", sample_rate=SAMPLE_RATE)
    assert len(p.warnings) == 2
    assert "1 clap-like sound(s) as loud as a clap" in p.warnings[0]
    assert "keep quiet until you are prompted" in p.warnings[0]
    assert p.warnings[1].startswith("heard 1 clap-like sound(s) while measuring")


def test_sudo_calibrate_writes_where_the_installed_service_reads(
    recording: Recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a shell there is no $STATE_DIRECTORY: the file went to root's home, which the
    service never reads, with "restart the daemon to use it"."""
    from claudio_daemon.calibrate import session

    service = tmp_path / "var-lib-claudio"  # stands for /var/lib/claudio
    service.mkdir()
    monkeypatch.setattr(session, "SERVICE_STATE", service)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "root-home"))
    rules = tmp_path / "rules.yaml"
    rules.write_text("appliances: {}\n")  # audio.calibration left at its default

    def calibrate(out: Path | None) -> str:
        opts = CalibrateOptions(rules=rules, input_file=recording.path, yes=True, out=out)
        text = io.StringIO()
        run_calibration(opts, out=text, err=io.StringIO(), stdin_interactive=False)
        return text.getvalue()

    said = calibrate(None)
    assert f"wrote {service / 'calibration.yaml'}" in said
    assert "restart the daemon" in said and "note:" not in said
    said = calibrate(tmp_path / "elsewhere.yaml")
    assert f"note: the daemon reads {service / 'calibration.yaml'}" in said
