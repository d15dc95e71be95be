"""The saved AWAY state: what a restart starts in, and files that cannot be trusted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

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
