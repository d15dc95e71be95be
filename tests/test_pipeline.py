"""The pipeline over time: a live reload keeps the clap detector's learned state unless its
settings changed and the stream's clock whatever changed; bad samples do not deafen it."""

from __future__ import annotations

import numpy as np

from claudio_daemon.calibrate.model import Calibration
from claudio_daemon.events import Action, ClapPattern
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


def _run(pipeline: Pipeline, x, reload_at_s: float | None = None, rules: str = "") -> list:
    events, block = [], 1024
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
