"""Live reload keeps the clap detector's learned state unless its settings changed."""

from __future__ import annotations

from claudio_daemon.calibrate.model import Calibration
from claudio_daemon.pipeline import Pipeline
from claudio_daemon.rules.loader import parse_rules

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
