"""The pipeline over time: a live reload keeps the clap detector's learned state unless its
settings changed and the stream's clock whatever changed; bad samples do not deafen it;
rules and AWAY hear what reaches their own thresholds."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np

from claudio_daemon.calibrate.model import Calibration
from claudio_daemon.events import Action, Alert, ClapPattern, LevelReading, SoundEvent
from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.pipeline import Pipeline
from claudio_daemon.rules.loader import parse_rules
from tests.test_claps import SR, scene

RULES = """\
audio: {calibration: null}
appliances:
  lamp: {preset: tasmota, topic: lamp}
triggers:
  - {claps: 2, actions: [lamp: toggle]}
"""


def test_reload_keeps_a_calibrated_detector() -> None:
    cal = Calibration(noise_floor_db=-60.0, clap_level_db=-20.0, onset_threshold_db=12.0)
    pipeline = Pipeline(parse_rules(RULES), None, calibration=cal)
    listener = pipeline.claps
    # Same claps section, another trigger: the detector (and its noise floor) stays.
    pipeline.replace_rules(parse_rules(RULES + "  - {claps: 3, actions: [lamp: 'on']}\n"))
    assert pipeline.claps is listener
    # Changed detector settings: a fresh detector with the calibration applied again.
    pipeline.replace_rules(parse_rules(RULES + "claps: {highpass_hz: 400}\n"))
    assert pipeline.claps is not listener
    assert pipeline.claps.settings.highpass_hz == 400
    assert pipeline.claps.settings.onset_threshold_db == 12.0


def test_what_rules_yaml_sets_under_claps_wins_over_a_calibration(caplog) -> None:
    """The example rules.yaml invites tuning onset_threshold_db and max_gap_s there; with
    any calibration file the measured values replaced them, silently."""
    cal = Calibration(
        noise_floor_db=-60.0,
        clap_level_db=-20.0,
        onset_threshold_db=12.0,
        min_gap_s=0.2,
        max_gap_s=0.8,
        end_silence_s=0.8,
    )
    caplog.set_level(logging.INFO, logger="claudio_daemon.pipeline")
    rules = RULES + "claps: {onset_threshold_db: 25, max_gap_s: 1.5, end_silence_s: 1.5}\n"
    s = Pipeline(parse_rules(rules), None, calibration=cal).claps.settings
    assert (s.onset_threshold_db, s.max_gap_s, s.end_silence_s) == (25.0, 1.5, 1.5)
    assert s.min_gap_s == 0.2  # not written in rules.yaml: the measurement's
    assert "rules.yaml's claps.end_silence_s 1.5, max_gap_s 1.5, onset_threshold_db 25" in (
        caplog.text
    )
    plain = Pipeline(parse_rules(RULES), None, calibration=cal).claps.settings
    assert (plain.onset_threshold_db, plain.max_gap_s) == (12.0, 0.8)


def _run(
    pipeline: Pipeline, x, reload_at_s: float | None = None, rules: str = "", block: int = 1024
) -> list:
    events = []
    for i in range(0, len(x), block):
        if reload_at_s is not None and i <= reload_at_s * SR < i + block:
            pipeline.replace_rules(parse_rules(rules))
        events += pipeline.process(x[i : i + block])
    return events


def test_a_reload_that_changes_the_detector_keeps_the_stream_clock() -> None:
    # The fresh detector counts from zero; its patterns must still be placed on the stream's
    # clock, or the second command lands "25 s earlier" than the first and its cooldown
    # (kept across the reload) silences it.
    x = scene([5.0, 5.4, 31.0, 31.4], 35.0).astype(np.float32)
    pipeline = Pipeline(parse_rules(RULES), None)
    events = _run(pipeline, x, reload_at_s=30.0, rules=RULES + "claps: {highpass_hz: 310}\n")
    patterns = [e for e in events if isinstance(e, ClapPattern)]
    assert [round(p.clap_samples[0] / SR, 1) for p in patterns] == [5.0, 31.0]
    assert all(p.decided_sample > p.clap_samples[-1] for p in patterns)
    assert [a.sample for a in events if isinstance(a, Action)] == [p.sample for p in patterns]


def _run_with_hole(pipeline: Pipeline, x: np.ndarray, hole_s: tuple[float, float]) -> list:
    """`x` as a microphone whose audio between the two times was dropped (the loop fell
    behind): the pipeline hears the rest, and is told how much is missing."""
    a, b = (int(t * SR) for t in hole_s)
    events = _run(pipeline, x[:a])
    pipeline.skip(b - a)
    return events + _run(pipeline, x[b:])


THREE_RULES = RULES + "  - {claps: 3, actions: [lamp: 'on']}\n"


def test_claps_are_never_counted_across_audio_the_source_lost(caplog) -> None:
    # Three claps for the "on" rule, the middle one lost in a hole: the two left must not
    # become the two-clap toggle, however close they sound with the hole cut out.
    x = scene([5.0, 5.45, 5.9], 9.0).astype(np.float32)
    caplog.set_level(logging.INFO, logger="claudio_daemon.pipeline")

    def counts(events: list) -> list[int]:
        return [e.count for e in events if isinstance(e, ClapPattern)]

    assert counts(_run(Pipeline(parse_rules(THREE_RULES), None), x)) == [3]
    events = _run_with_hole(Pipeline(parse_rules(THREE_RULES), None), x, (5.3, 5.6))
    assert [e for e in events if isinstance(e, ClapPattern | Action)] == []
    assert "audio lost (0.30 s): the 1 clap before it not counted" in caplog.text
    # The first two lost: the last one alone is no single clap either (it may end a
    # pattern the hole swallowed), nor does a second one after it make a pair.
    y = scene([5.0, 5.45, 5.9, 6.3], 9.0).astype(np.float32)
    assert counts(_run(Pipeline(parse_rules(THREE_RULES), None), y)) == []  # four: applause
    assert counts(_run_with_hole(Pipeline(parse_rules(THREE_RULES), None), y, (4.8, 5.7))) == []
    # Fed without saying so, the splice is what the daemon used to do: a wrong command.
    blind = Pipeline(parse_rules(THREE_RULES), None)
    spliced = np.concatenate([x[: int(5.3 * SR)], x[int(5.6 * SR) :]])
    assert counts(_run(blind, spliced)) == [2]


def test_after_lost_audio_events_keep_the_stream_clock() -> None:
    # Claps after a hole are heard as ever, at the time they happened: cooldowns, AWAY
    # timing and event times follow real time, not only the audio that arrived.
    x = scene([2.0, 2.4, 8.0, 8.4], 11.0).astype(np.float32)
    whole = [e for e in _run(Pipeline(parse_rules(RULES), None), x) if isinstance(e, ClapPattern)]
    pipeline = Pipeline(parse_rules(RULES), None)
    events = _run_with_hole(pipeline, x, (4.0, 5.5))
    patterns = [e for e in events if isinstance(e, ClapPattern)]
    assert [p.count for p in patterns] == [p.count for p in whole] == [2, 2]
    for got, want in zip(patterns, whole, strict=True):
        assert np.abs(np.subtract(got.clap_samples, want.clap_samples)).max() <= 64
        assert abs(got.decided_sample - want.decided_sample) <= 2048
    assert [a.sample for a in events if isinstance(a, Action)] == [p.sample for p in patterns]
    assert pipeline.stream_sample == x.size - int(1.5 * SR) + pipeline.stats.lost
    assert pipeline.stats.lost == int(5.5 * SR) - int(4.0 * SR)
    readings = [e.sample for e in events if isinstance(e, LevelReading)]
    assert readings and readings[-1] > int(5.5 * SR)  # on the stream clock too
    assert all(b > a for a, b in zip(readings[:-1], readings[1:], strict=False))


def test_rules_without_a_clap_trigger_still_hear_claps_for_away_mode() -> None:
    # No enabled rule asks for claps (a sound-only file, or the clap rule switched off):
    # the daemon must start, and AWAY mode still treats claps as a sound in the house.
    sound_only = RULES.replace(
        "{claps: 2, actions: [lamp: toggle]}", "{claps: 2, enabled: false, actions: [lamp: toggle]}"
    )
    sound_only += "away: {armed: true, sounds: [clapping], actions: [lamp], arm_delay_s: 0}\n"
    x = scene([2.0, 2.4], 5.0).astype(np.float32)
    events = _run(Pipeline(parse_rules(sound_only), None), x)
    assert [e.count for e in events if isinstance(e, ClapPattern)] == [2]
    assert [(a.command, a.reason) for a in events if isinstance(a, Action)] == [("on", "away")]
    # ... and a reload into such a file is taken (it used to be refused half-applied).
    pipeline = Pipeline(parse_rules(RULES), None)
    pipeline.set_away(True, "test")  # a reload keeps the mode; the file's `armed` is for start
    events = _run(pipeline, scene([6.0, 6.4], 9.0).astype(np.float32), 3.0, sound_only)
    assert pipeline.rules.triggers[0].enabled is False
    assert [(a.command, a.reason) for a in events if isinstance(a, Action)] == [("on", "away")]


def test_samples_that_are_not_numbers_do_not_deafen_the_daemon(caplog) -> None:
    # One NaN or inf used to turn the detector's noise floor (and the level gate's) into
    # NaN for good: every later clap was lost without a word.
    x = scene([5.0, 5.4, 20.0, 20.4], 23.0).astype(np.float32)
    x[int(2.5 * SR)], x[int(2.6 * SR)], x[int(15.0 * SR)] = np.nan, np.inf, -np.inf
    pipeline = Pipeline(parse_rules(RULES), None)
    with caplog.at_level("WARNING", logger="claudio_daemon.pipeline"):
        events = _run(pipeline, x)
    assert [round(p.clap_samples[0] / SR, 1) for p in events if isinstance(p, ClapPattern)] == [
        5.0,
        20.0,
    ]
    assert np.isfinite(pipeline.noise_floor_db) and np.isfinite(pipeline.claps.noise_floor_db)
    warnings = [r.getMessage() for r in caplog.records if "not numbers" in r.getMessage()]
    assert len(warnings) == 1 and "from 2.50 s on" in warnings[0]  # once a minute of audio at most


class ScriptedClassifier:
    """Stands in for OnnxClassifier: glass_breaking scores from a script, one per window."""

    def __init__(self, script: list[float], clap_check: dict[str, float] | None = None) -> None:
        self.script = list(script)
        self.frontend = FrontEndConfig()
        self.labels = ("glass_breaking", "dog")
        self.metadata = SimpleNamespace(clap_check=clap_check or {}, model_name="scripted")

    def classify_audio(self, audio) -> dict[str, float]:
        return {"clapping": 0.9}

    def scores(self, window) -> dict[str, float]:
        score = self.script.pop(0) if self.script else 0.0
        return {"glass_breaking": score, "dog": 0.0}


GLASS = """\
audio: {calibration: null}
claps: {enabled: false}
sounds: {default_threshold: 0.8, hold_s: 2.0}
appliances:
  lamp: {preset: tasmota, topic: lamp}
triggers:
  - {sound: glass_breaking, min_score: 0.85, actions: [lamp: "on"], cooldown_s: 0}
"""


def _noise(db: float, seconds: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (db / 20)).astype(np.float32)


def _settled(pipeline: Pipeline) -> Pipeline:
    """Past its first full window (classified whatever the gate says, before which the
    model hears nothing): a quiet room, outside the classifier's script, so a test's audio
    meets a pipeline as it runs all day. Its events start at `pipeline.stats.samples`."""
    clf = pipeline.classifier
    script, clf.script = clf.script, []
    every = pipeline._classify_every()  # up to a point: the test's audio starts on one
    n = -(-pipeline.cfg.clip_samples // every) * every
    pipeline.process(_noise(-70.0, n / SR, 99))
    clf.script = script
    assert not pipeline._first_look
    return pipeline


def test_rules_and_away_hear_windows_that_the_event_hold_keeps_back() -> None:
    # The glass breaks: the first window scores 0.82 (above the reporting threshold 0.8,
    # below the rule's 0.85), the next ones 0.95. The event hold (2 s) keeps the published
    # events to one, but the rule must fire on the first 0.95 window, and once only.
    x = np.concatenate([np.zeros(2 * SR, np.float32), _noise(-10.0, 3.0, 0)])
    clf = ScriptedClassifier([0.82, 0.95, 0.95, 0.95])
    events = _run(_settled(Pipeline(parse_rules(GLASS), clf)), x)
    assert not clf.script  # all four windows were classified
    (sound,) = [e for e in events if isinstance(e, SoundEvent)]
    assert round(sound.score, 2) == 0.82
    (action,) = [a for a in events if isinstance(a, Action)]
    assert action.reason == "sound:glass_breaking"
    assert sound.sample < action.sample <= sound.sample + SR  # the next window, not later
    # AWAY asking more than the label's threshold alerts on those windows too.
    away = GLASS.split("triggers:")[0] + (
        "away: {armed: true, arm_delay_s: 0, margin_db: null, min_score: 0.9, actions: [lamp]}\n"
    )
    events = _run(_settled(Pipeline(parse_rules(away), ScriptedClassifier([0.82, 0.95, 0.95]))), x)
    assert [round(e.score, 2) for e in events if isinstance(e, Alert)] == [0.95]


def test_a_sound_already_going_on_when_the_stream_starts_is_classified() -> None:
    """The level gate takes the first level it hears for the room's floor: a siren that was
    sounding when the daemon (re)started never opened it, and was never classified. The
    first full window is classified whatever the gate says; after that the gate decides."""
    x = _noise(-20.0, 12.0, 7)  # steady from the first sample to the last
    pipeline = Pipeline(parse_rules(GLASS), ScriptedClassifier([0.95]))
    events = _run(pipeline, x)
    (sound,) = [e for e in events if isinstance(e, SoundEvent)]
    clip = pipeline.cfg.clip_samples
    assert clip - 1024 < sound.sample <= clip  # as soon as the model has a whole window
    assert pipeline.stats.classifications == 1  # once: the steady sound keeps the gate shut


def test_away_min_score_lowers_reporting_only_while_armed() -> None:
    # AWAY asks for glass at 0.5, below the 0.8 reporting threshold. Disarmed, a 0.6 guess
    # is no sound event (it would be published to MQTT and Home Assistant all day long);
    # armed, it is reported and alerts.
    x = np.concatenate([np.zeros(2 * SR, np.float32), _noise(-10.0, 1.0, 0)])
    rules = GLASS.split("triggers:")[0] + (
        "away: {armed: false, arm_delay_s: 0, margin_db: null, min_score: 0.5,\n"
        "       sounds: [glass_breaking], actions: [lamp]}\n"
    )
    home = _run(_settled(Pipeline(parse_rules(rules), ScriptedClassifier([0.6, 0.6]))), x)
    assert [e for e in home if isinstance(e, (SoundEvent, Alert))] == []
    pipeline = _settled(Pipeline(parse_rules(rules), ScriptedClassifier([0.6, 0.6])))
    pipeline.set_away(True, "test")
    away = _run(pipeline, x)
    assert [round(e.score, 1) for e in away if isinstance(e, SoundEvent)] == [0.6]
    assert [round(e.score, 1) for e in away if isinstance(e, Alert)] == [0.6]


AWAY_LEVEL = """\
audio: {calibration: null}
appliances:
  lamp: {preset: tasmota, topic: lamp}
away:
  armed: true
  arm_delay_s: 0
  actions: [lamp]
"""


def test_away_level_alerts_follow_away_settings_not_the_level_gate() -> None:
    # A -85 dBFS room, then a sound at -64 dBFS: below the gate's -60 dBFS limit, so the
    # classifier stays idle, but above both `min_level_db: -70` and floor + margin_db 20.
    x = np.concatenate([_noise(-85.0, 8.0, 1), _noise(-64.0, 1.0, 2)])
    for extra in ("  min_level_db: -70\n", ""):
        pipeline = Pipeline(parse_rules(AWAY_LEVEL + extra), ScriptedClassifier([]))
        events = _run(pipeline, x)
        alerts = [e for e in events if isinstance(e, Alert)]
        assert len(alerts) == 1 and alerts[0].label is None, extra
        assert alerts[0].sample > 8 * SR and alerts[0].level_db > -65.0
        # The stream's first full window only (the quiet room), not the quiet sound.
        assert pipeline.stats.classifications == 1
    # Below the threshold nothing alerts: -70 dBFS is only 15 dB above the floor.
    x = np.concatenate([_noise(-85.0, 5.0, 1), _noise(-70.0, 1.0, 2)])
    assert not [e for e in _run(Pipeline(parse_rules(AWAY_LEVEL), None), x) if isinstance(e, Alert)]


CLAP_RULES = "claps: {min_clap_score: 0.5}\n" + RULES


def test_reload_applies_clap_overrides_that_equal_built_in_values() -> None:
    # The model's metadata carries min_clap_score 0.7; writing 0.5 (the built-in default)
    # overrules it, and deleting the line returns to the model's value, without a restart.
    pipeline = Pipeline(parse_rules(RULES), ScriptedClassifier([], {"min_clap_score": 0.7}))
    assert pipeline.claps.settings.min_clap_score == 0.7
    pipeline.replace_rules(parse_rules(CLAP_RULES))
    assert pipeline.claps.settings.min_clap_score == 0.5
    listener = pipeline.claps
    pipeline.replace_rules(parse_rules(CLAP_RULES + "  - {claps: 3, actions: [lamp: 'on']}\n"))
    assert pipeline.claps is listener  # same effective settings: the detector stays
    pipeline.replace_rules(parse_rules(RULES))
    assert pipeline.claps.settings.min_clap_score == 0.7


def test_the_same_sounds_whatever_the_block_size(shared_data) -> None:  # noqa: ANN001
    """The classifier runs at fixed points of the stream, not once a block: a replay read
    in other blocks than the live sound card's reports the same sounds at the same samples
    (it classified other windows, and once missed a clapping clip)."""
    from pathlib import Path

    import soundfile as sf

    from claudio_daemon.audio.resample import StreamingResampler
    from claudio_daemon.model.classifier import OnnxClassifier

    model = Path(__file__).resolve().parents[1] / "models" / "claudio-esc50-se_resnet18.onnx"
    clf = OnnxClassifier(model, device="cpu", threads=1)
    folder = shared_data / "esc50-16k-folds123" / "audio"
    clips = [sorted(folder.glob(f"*-{c}.flac"))[0] for c in (0, 30, 22, 40)]
    audio = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in clips])
    resampler = StreamingResampler(16000, clf.frontend.sample_rate)
    x = np.concatenate([resampler.process(audio), resampler.flush()])
    rules = parse_rules(RULES + "sounds:\n  default_threshold: 0.5\n")

    def sounds(block: int) -> list[tuple[str, int, float]]:
        out = _run(Pipeline(rules, clf), x, block=block)
        return [(e.label, e.sample, round(e.score, 6)) for e in out if isinstance(e, SoundEvent)]

    live = sounds(1024)
    assert len({label for label, _, _ in live}) >= 3, live
    for block in (4096, 777, 22050 * 3):
        assert sounds(block) == live, block


class WindowContentClassifier(ScriptedClassifier):
    """Scores glass_breaking high only when the window it is given holds a sound (in its
    last `recent_frames` frames, when given)."""

    def __init__(self, recent_frames: int | None = None) -> None:
        super().__init__([])
        self.calls = 0
        self.recent_frames = recent_frames

    def scores(self, window) -> dict[str, float]:
        self.calls += 1
        # Frame by frame (dB, mean over the mel bands): a sound stands 10 dB above the
        # window's typical frame, the room's own noise does not.
        frames = np.asarray(window).reshape(self.frontend.n_mels, -1).mean(axis=0)
        recent = frames[-self.recent_frames :] if self.recent_frames else frames
        holds = float(recent.max() - np.median(frames)) > 10.0
        return {"glass_breaking": 0.99 if holds else 0.0, "dog": 0.0}


def test_classify_every_longer_than_the_window_still_hears_a_short_sound() -> None:
    """classify_every_s may be up to 10 s, the model hears 5.94 s: points stay at most half
    a window apart, so a 0.5 s sound right after one is inside the window at the next."""
    rules = parse_rules(
        GLASS.replace(
            "claps: {enabled: false}", "claps: {enabled: false}\nmodel: {classify_every_s: 8.0}"
        )
    )
    x = np.concatenate(
        [np.zeros(SR, np.float32), _noise(-10.0, 0.5, 0), np.zeros(int(18.5 * SR), np.float32)]
    )
    clf = WindowContentClassifier()
    events = _run(Pipeline(rules, clf), x)
    assert [e.label for e in events if isinstance(e, SoundEvent)] == ["glass_breaking"]
    assert clf.calls <= 3  # still about one classification per interval, not per block


AWAY_MIN_LEVEL = """\
audio: {calibration: null}
appliances:
  lamp: {preset: tasmota, topic: lamp}
away: {armed: true, arm_delay_s: 0, min_level_db: -40, cooldown_s: 20, actions: [lamp]}
"""


def test_away_min_level_alerts_on_a_new_noise_not_for_as_long_as_it_runs() -> None:
    """A dehumidifier at -30 dBFS switched on in a quiet room alerts (it is new), then
    becomes the room's floor: no alert and lamps ON every cooldown all night."""
    x = np.concatenate([_noise(-85.0, 5.0, 1), _noise(-30.0, 120.0, 2)])
    events = _run(Pipeline(parse_rules(AWAY_MIN_LEVEL), None), x, block=4096)
    alerts = [e for e in events if isinstance(e, Alert)]
    assert 1 <= len(alerts) <= 2, [round(a.sample / SR, 1) for a in alerts]
    assert alerts[0].sample < 6 * SR


def test_away_with_no_cooldown_alerts_once_per_sound_not_per_window() -> None:
    rules = parse_rules(
        """\
audio: {calibration: null}
claps: {enabled: false}
sounds: {hold_s: 2.0}
appliances:
  lamp: {preset: tasmota, topic: lamp}
away: {armed: true, arm_delay_s: 0, margin_db: null, cooldown_s: 0, sounds: [glass_breaking],
       actions: [lamp]}
"""
    )
    x = np.concatenate(
        [np.zeros(2 * SR, np.float32), _noise(-10.0, 5.0, 3), np.zeros(2 * SR, np.float32)]
    )
    clf = ScriptedClassifier([0.95] * 20)
    alerts = [e for e in _run(Pipeline(rules, clf), x) if isinstance(e, Alert)]
    assert len(alerts) == 1 and len(clf.script) < 15  # many windows, one bark


def test_a_sound_recognised_points_after_it_ended_keeps_its_level() -> None:
    """The model may only be sure a point or two after a short sound ended (more of it in
    the window's context): the event still tells the loudest level the window held, not
    the quiet room since the previous point."""
    x = np.concatenate([_noise(-70.0, 1.0, 4), _noise(-10.0, 0.3, 5), _noise(-70.0, 3.0, 6)])
    clf = ScriptedClassifier([0.1, 0.1, 0.95])
    pipeline = _settled(Pipeline(parse_rules(GLASS), clf))
    start = pipeline.stats.samples
    events = _run(pipeline, x)
    (sound,) = [e for e in events if isinstance(e, SoundEvent)]
    assert sound.sample - start >= 2.0 * SR  # a full point after the sound's own
    assert -12.0 < sound.level_db < -8.0, sound.level_db


def test_a_sound_event_tells_how_loud_the_sound_was() -> None:
    """The point of classification may come after a short sound ended: its event carries
    the loudest level since the last point, not the room's level at that moment."""
    x = np.concatenate([_noise(-70.0, 1.0, 4), _noise(-10.0, 0.3, 5), _noise(-70.0, 2.0, 6)])
    pipeline = _settled(Pipeline(parse_rules(GLASS), WindowContentClassifier()))
    start = pipeline.stats.samples
    events = _run(pipeline, x)
    (sound,) = [e for e in events if isinstance(e, SoundEvent)]
    assert sound.sample - start > 1.3 * SR  # classified after the sound had ended
    assert -12.0 < sound.level_db < -8.0, sound.level_db


def test_a_quiet_sound_after_a_loud_one_keeps_its_own_level() -> None:
    """Two sounds 3.5 s apart share the model's 5.94 s window: the quiet second one was
    reported at the loud first one's level (a glass at -40 dBFS 'at -20 dB')."""
    x = np.concatenate(
        [
            _noise(-20.0, 0.5, 11),
            _noise(-70.0, 3.0, 12),
            _noise(-40.0, 0.5, 13),
            _noise(-70.0, 2.0, 14),
        ]
    )
    pipeline = _settled(
        Pipeline(parse_rules(GLASS), WindowContentClassifier(recent_frames=43))
    )  # ~1 s
    events = [e for e in _run(pipeline, x) if isinstance(e, SoundEvent)]
    assert [round(e.level_db) for e in events] == [-20, -40]


def test_a_fresh_clap_listener_does_not_count_the_rest_of_clapping_under_way(caplog) -> None:
    # rules.yaml's clap settings change (a save, or `calibrate`) between the first and the
    # second of three claps: the fresh detector hears two, which must not toggle the lamp.
    x = scene([5.0, 5.45, 5.9], 9.0).astype(np.float32)
    tuned = THREE_RULES + "claps: {highpass_hz: 310}\n"
    caplog.set_level(logging.INFO, logger="claudio_daemon.pipeline")

    def counts(events: list) -> list[int]:
        return [e.count for e in events if isinstance(e, ClapPattern)]

    assert counts(_run(Pipeline(parse_rules(THREE_RULES), None), x, 5.2, tuned)) == []
    assert "clap settings changed while clapping" in caplog.text
    # Right after a hole the same holds: the after-hole caution moves to the fresh listener.
    y = scene([5.0, 5.45, 5.9, 6.3], 9.0).astype(np.float32)
    pipeline = Pipeline(parse_rules(THREE_RULES), None)
    a, b = int(4.8 * SR), int(5.7 * SR)
    events = _run(pipeline, y[:a])
    pipeline.skip(b - a)
    events += _run(pipeline, y[b:], 0.0, tuned)
    assert counts(events) == []
    # A reload in a quiet moment costs nothing: the next pattern is counted as ever.
    z = scene([5.0, 5.45, 5.9], 9.0).astype(np.float32)
    assert counts(_run(Pipeline(parse_rules(THREE_RULES), None), z, 3.0, tuned)) == [3]
