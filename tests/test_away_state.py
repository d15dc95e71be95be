"""The saved AWAY state: what a restart starts in, and files that cannot be trusted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from claudio_daemon.service.away_state import AwayStore, SavedAway, starting_state


def test_a_saved_state_outlives_a_restart_until_rules_yaml_changes_armed(tmp_path: Path) -> None:
    store = AwayStore(tmp_path / "away.json")
    assert store.load() is None
    assert starting_state(False, None) == (False, "rules.yaml")
    store.save(True, "mqtt", rules_armed=False)
    saved = store.load()
    assert saved is not None and (saved.armed, saved.source, saved.rules_armed) == (
        True,
        "mqtt",
        False,
    )
    armed, why = starting_state(False, saved)
    assert armed is True and why.startswith("restored: set by mqtt at ")
    # Someone since wrote `armed: true` in rules.yaml: that is newer than the command.
    assert starting_state(True, SavedAway(False, "mqtt", 0.0, rules_armed=False)) == (
        True,
        "rules.yaml",
    )
    # Disarmed over MQTT while rules.yaml says armed: a restart stays disarmed.
    assert starting_state(True, SavedAway(False, "mqtt", 0.0, rules_armed=True))[0] is False


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"armed": "yes", "source": "mqtt", "saved_at": 1, "rules_armed": false}', "{}"],
)
def test_an_unreadable_state_file_falls_back_to_rules_yaml(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "away.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert AwayStore(path).load() is None
    assert f"{path}: unreadable AWAY state" in caplog.text


def test_a_state_that_cannot_be_written_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = AwayStore(tmp_path / "missing-dir" / "away.json")
    with caplog.at_level(logging.WARNING):
        store.save(True, "mqtt", rules_armed=False)
        store.save(False, "mqtt", rules_armed=False)
    assert caplog.text.count("cannot save the AWAY state") == 1
    (tmp_path / "missing-dir").mkdir()
    store.save(True, "cli", rules_armed=False)
    assert json.loads((tmp_path / "missing-dir" / "away.json").read_text())["armed"] is True
    assert not list((tmp_path / "missing-dir").glob(".*.tmp"))


def test_a_restored_disarm_reaches_the_engine(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """rules.yaml says armed; the owner disarmed from the phone; the Pi rebooted. Home
    Assistant was told OFF while the engine, built armed from rules.yaml, still alerted
    and switched the lamps on for the family at home."""
    from claudio_daemon import app
    from claudio_daemon.events import Action, Alert
    from claudio_daemon.mqtt.publisher import MqttPublisher
    from claudio_daemon.pipeline import Pipeline
    from claudio_daemon.rules.loader import parse_rules
    from claudio_daemon.runner import Runner

    rules = parse_rules(
        "audio: {calibration: null}\n"
        "appliances:\n  lamp: {preset: tasmota, topic: lamp}\n"
        "away: {armed: true, actions: [lamp], arm_delay_s: 0}\n"
    )
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    AwayStore(tmp_path / "away.json").save(False, "mqtt", rules_armed=True)
    runner = Runner(Pipeline(rules, None))
    app.start_away(runner, MqttPublisher(rules.mqtt), rules.away.armed)
    assert not runner.pipeline.engine.away
    sr = runner.pipeline.sample_rate
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(sr * 3) * 1e-3).astype(np.float32)
    loud = (rng.standard_normal(sr // 2) * 0.3).astype(np.float32)
    events = runner.pipeline.process(quiet) + runner.pipeline.process(loud)
    assert [e for e in events if isinstance(e, (Alert, Action))] == []
