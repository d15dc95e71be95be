"""rules.yaml: schema, loader line numbers, presets and secrets."""

from __future__ import annotations

import csv
import json
import textwrap
from datetime import time
from pathlib import Path

import pytest

from claudio_daemon.rules import presets
from claudio_daemon.rules.loader import (
    Problem,
    RulesError,
    check_file,
    check_labels,
    load_rules,
    parse_rules,
)
from claudio_daemon.rules.schema import Appliance, RulesFile, TimeWindow, max_clap_count
from claudio_daemon.rules.secrets import SecretError, expand_path, resolve_secret

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
appliances:
  lamp:
    preset: tasmota
    topic: lamp
  tv:
    preset: zigbee2mqtt
    topic: living_room_tv
"""


def parse(text: str) -> RulesFile:
    return parse_rules(textwrap.dedent(text), "rules.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        parse(text)
    return info.value.lines()


# --------------------------------------------------------------------------- example file


def test_repository_rules_yaml_loads():
    rules = load_rules(ROOT / "rules.yaml")
    assert set(rules.appliances) == {"lamp", "tv"}
    assert rules.mqtt.host == "localhost" and rules.mqtt.port == 1883
    assert rules.mqtt.password_env is None and rules.mqtt.password_file is None
    by_claps = {t.claps: t for t in rules.triggers if t.claps is not None and t.enabled}
    assert [(a.appliance, a.command) for a in by_claps[2].actions] == [("lamp", "toggle")]
    assert [(a.appliance, a.command) for a in by_claps[3].actions] == [("tv", "toggle")]
    assert rules.max_clap_count() == 3
    assert rules.away.armed is False
    assert rules.away.actions == ["lamp", "tv"]
    assert check_file(ROOT / "rules.yaml") == []


def test_repository_rules_yaml_labels_exist_in_esc50(shared_data):
    with open(shared_data / "esc50-fold4-dev" / "meta" / "esc50.csv", newline="") as f:
        labels = sorted({row["category"] for row in csv.DictReader(f)})
    assert check_file(ROOT / "rules.yaml", labels) == []
    rules = load_rules(ROOT / "rules.yaml")
    assert check_labels(rules, labels) == []


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("spec", "command", "topic", "payload"),
    [
        ({"preset": "tasmota", "topic": "lamp"}, "on", "cmnd/lamp/POWER", "ON"),
        ({"preset": "tasmota", "topic": "lamp"}, "off", "cmnd/lamp/POWER", "OFF"),
        ({"preset": "tasmota", "topic": "lamp"}, "toggle", "cmnd/lamp/POWER", "TOGGLE"),
        ({"preset": "tasmota", "topic": "strip", "channel": 2}, "on", "cmnd/strip/POWER2", "ON"),
        ({"preset": "zigbee2mqtt", "topic": "tv"}, "on", "zigbee2mqtt/tv/set", '{"state": "ON"}'),
        ({"preset": "zigbee2mqtt", "topic": "tv"}, "off", "zigbee2mqtt/tv/set", '{"state": "OFF"}'),
        (
            {"preset": "zigbee2mqtt", "topic": "tv"},
            "toggle",
            "zigbee2mqtt/tv/set",
            '{"state": "TOGGLE"}',
        ),
        (
            {"preset": "zigbee2mqtt", "topic": "hall/tv", "base_topic": "z2m"},
            "on",
            "z2m/hall/tv/set",
            '{"state": "ON"}',
        ),
        (
            {"preset": "shelly", "topic": "shelly1-AB"},
            "on",
            "shellies/shelly1-AB/relay/0/command",
            "on",
        ),
        ({"preset": "shelly", "topic": "s"}, "off", "shellies/s/relay/0/command", "off"),
        (
            {"preset": "shelly", "topic": "s", "channel": 1},
            "toggle",
            "shellies/s/relay/1/command",
            "toggle",
        ),
        (
            {"preset": "plain", "command_topic": "fan/set", "payload_on": "1", "payload_off": "0"},
            "off",
            "fan/set",
            "0",
        ),
        (
            {"preset": "tasmota", "topic": "lamp", "command_topic": "x/y", "payload_on": "1"},
            "on",
            "x/y",
            "1",
        ),
    ],
)
def test_preset_topic_and_payload(spec, command, topic, payload):
    appliance = Appliance.model_validate(spec)
    assert presets.command_message(appliance, command) == (topic, payload)
    assert appliance.message(command) == (topic, payload)


def test_zigbee2mqtt_payload_is_json():
    appliance = Appliance(preset="zigbee2mqtt", topic="tv")
    assert json.loads(appliance.message("toggle")[1]) == {"state": "TOGGLE"}


def test_state_topics():
    assert presets.state_topic(Appliance(preset="tasmota", topic="lamp")) == "stat/lamp/POWER"
    assert presets.state_topic(Appliance(preset="zigbee2mqtt", topic="tv")) == "zigbee2mqtt/tv"
    assert presets.state_topic(Appliance(preset="shelly", topic="s")) == "shellies/s/relay/0"
    plain = Appliance(preset="plain", command_topic="a", payload_on="1", payload_off="0")
    assert presets.state_topic(plain) is None
    assert not presets.supports(plain, "toggle")
    with pytest.raises(ValueError, match="payload_toggle"):
        presets.command_message(plain, "toggle")


# --------------------------------------------------------------------------- error lines


def test_unknown_appliance_message_is_exact():
    text = BASE + textwrap.dedent(
        """\
        triggers:
          - claps: 2
            actions:
              - lamp: toggle
          - claps: 3
            actions:
              - appliance: lampp
        """
    )
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml")
    assert str(info.value) == (
        "rules.yaml:14: triggers[1].actions[0].appliance: unknown appliance 'lampp' "
        "(known: lamp, tv)"
    )
    assert info.value.problems == [
        Problem(
            14, "triggers[1].actions[0].appliance", "unknown appliance 'lampp' (known: lamp, tv)"
        )
    ]


def test_unknown_key_line_and_path():
    lines = problems(
        BASE
        + """\
triggers:
  - claps: 2
    actions: [lamp]
    coldown_s: 3
"""
    )
    assert lines == [
        "rules.yaml:11: triggers[0].coldown_s: unknown key 'coldown_s' (did you mean 'cooldown_s'?)"
    ]


def test_unknown_top_level_section():
    lines = problems("mqtt:\n  host: localhost\nappliance: {}\n")
    assert len(lines) == 1
    assert lines[0].startswith("rules.yaml:3: appliance: unknown key 'appliance'")
    assert "appliances" in lines[0]


def test_claps_zero_is_rejected_with_line():
    lines = problems(BASE + "triggers:\n  - claps: 0\n    actions: [lamp]\n")
    assert lines == [
        "rules.yaml:9: triggers[0].claps: Input should be greater than or equal to 1 (got 0)"
    ]


def test_time_window_out_of_range():
    lines = problems(
        BASE + 'triggers:\n  - claps: 2\n    when: ["25:00-07:00"]\n    actions: [lamp]\n'
    )
    assert len(lines) == 1
    assert lines[0].startswith("rules.yaml:10: triggers[0].when[0]: time window '25:00-07:00'")
    assert "'25:00' is not a time of day" in lines[0]


@pytest.mark.parametrize("window", ["7:00", "07:60-08:00", "24:00-07:00", "07:00-07:00", "a-b"])
def test_bad_time_windows(window):
    lines = problems(BASE + f'triggers:\n  - claps: 2\n    when: "{window}"\n    actions: [lamp]\n')
    assert len(lines) == 1 and lines[0].startswith("rules.yaml:10: triggers[0].when")


def test_time_window_contains_across_midnight():
    night = TimeWindow.model_validate("22:00-07:00")
    assert (
        night.contains(time(23, 59)) and night.contains(time(0, 0)) and night.contains(time(6, 59))
    )
    assert not night.contains(time(7, 0)) and not night.contains(time(12, 0))
    assert night.contains(time(22, 0))
    evening = TimeWindow.model_validate("18:00-24:00")
    assert evening.contains(time(23, 59, 59)) and not evening.contains(time(0, 0))
    assert str(night) == "22:00-07:00"


def test_plain_password_rejected():
    lines = problems("mqtt:\n  username: claudio\n  password: hunter2\n")
    assert len(lines) == 1
    assert lines[0].startswith("rules.yaml:3: mqtt.password: ")
    assert "password_env" in lines[0] and "password_file" in lines[0]
    assert "hunter2" not in lines[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("password_env", "918273645"),
        ("password_env", "3.14159"),
        ("password_env", "s3cr3t pass"),
        ("password_file", "918273645"),
        ("password_file", "3.14159"),
    ],
)
def test_a_password_pasted_where_its_name_or_file_belongs_is_not_echoed(key, value):
    """The error reaches the journal and `systemctl status`: a PIN-like password that
    YAML reads as a number was echoed ("got 918273645"), a string one was not."""
    lines = problems(f"mqtt:\n  username: claudio\n  {key}: {value}\n")
    assert len(lines) == 1 and lines[0].startswith(f"rules.yaml:3: mqtt.{key}: ")
    assert value not in lines[0]


def test_yaml_syntax_error_has_file_and_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("mqtt:\n  host: localhost\ntriggers: [\n  {claps: 2\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    (line,) = info.value.lines()
    assert line.startswith(f"{path}:5: YAML syntax error")


def test_yaml_bad_indentation_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("mqtt:\n  host: localhost\n port: 1883\n")
    (line,) = check_file(path)
    assert line.startswith(f"{path}:3: YAML syntax error")


def test_duplicate_key_rejected():
    lines = problems(BASE + "  lamp:\n    preset: shelly\n    topic: x\n")
    assert lines == [
        "rules.yaml:8: appliances.lamp: duplicate key 'lamp' (first at line 2); "
        "YAML would silently keep only the last one"
    ]


def test_an_alias_to_itself_is_a_line_not_a_crash():
    """`&x [*x]` builds a value that contains itself: it crashed check and start-up with a
    RecursionError."""
    lines = problems(BASE + "triggers: &loop\n  - *loop\n")
    assert lines == [
        "rules.yaml:8: this YAML anchor (&name) contains an alias to itself (*name): "
        "a value cannot include itself"
    ]
    # Aliases that do not loop are fine (and common: shared actions).
    rules = parse(
        BASE + "triggers:\n  - {claps: 2, actions: &a [lamp: toggle]}\n"
        "  - {claps: 3, actions: *a}\n"
    )
    assert rules.triggers[0].actions == rules.triggers[1].actions


def test_empty_and_non_mapping_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    assert check_file(empty) == [f"{empty}: file is empty; start from the example rules.yaml"]
    listing = tmp_path / "list.yaml"
    listing.write_text("- claps: 2\n")
    (line,) = check_file(listing)
    assert line.startswith(f"{listing}:1: the top level must be a mapping")
    (line,) = check_file(tmp_path / "missing.yaml")
    assert "missing.yaml: cannot read" in line


def test_several_problems_all_reported_in_line_order():
    lines = problems(
        """\
        appliances:
          lamp: {preset: tasmota}
        triggers:
          - claps: 9
            actions: [lamp]
          - sound: dog
            claps: 2
            actions: [lamp]
        away:
          min_score: 1.5
        """
    )
    assert [line.split(":")[1] for line in lines] == ["2", "4", "6", "10"]
    assert "preset tasmota needs topic" in lines[0]
    assert "exactly one of" in lines[2]


def test_cross_field_checks():
    text = BASE + textwrap.dedent(
        """\
          fan:
            preset: plain
            command_topic: fan/set
            payload_on: "1"
            payload_off: "0"
        triggers:
          - claps: 2
            actions: [lamp]
          - claps: 2
            actions:
              - fan: toggle
        away:
          actions: [tv, radio]
        """
    )
    lines = problems(text)
    assert lines == [
        "rules.yaml:16: triggers[1].claps: 2 claps is already used by triggers[0] at "
        "overlapping times; list both actions in one rule, or give the rules `when` windows "
        "that do not overlap",
        "rules.yaml:18: triggers[1].actions[0].appliance: appliance 'fan' has no "
        "payload_toggle; set it or use on/off",
        "rules.yaml:20: away.actions[1]: unknown appliance 'radio' (known: fan, lamp, tv)",
    ]


def test_same_clap_count_allowed_in_separate_windows_or_when_disabled():
    rules = parse(
        BASE
        + """\
triggers:
  - claps: 2
    when: ["07:00-22:00"]
    actions: [lamp]
  - claps: 2
    when: "22:00-07:00"
    actions: [{tv: "on"}]
  - claps: 2
    enabled: false
    actions: [tv]
  - claps: 5
    enabled: false
    actions: [tv]
"""
    )
    assert max_clap_count(rules) == 2
    assert rules.triggers[1].actions[0].command == "on"
    # Overlap by one hour is ambiguous.
    lines = problems(
        BASE
        + """\
triggers:
  - {claps: 2, when: "07:00-23:00", actions: [lamp]}
  - {claps: 2, when: "22:00-07:00", actions: [tv]}
"""
    )
    assert len(lines) == 1 and lines[0].startswith("rules.yaml:10: triggers[1].claps:")


def test_unquoted_on_off_in_yaml():
    rules = parse(
        BASE + "triggers:\n  - claps: 2\n    actions:\n      - lamp: on\n      - tv: off\n"
    )
    assert [a.command for a in rules.triggers[0].actions] == ["on", "off"]
    lines = problems(
        "appliances:\n  fan:\n    preset: plain\n    command_topic: f\n"
        "    payload_on: ON\n    payload_off: 'OFF'\n"
    )
    assert len(lines) == 1 and lines[0].startswith("rules.yaml:5: appliances.fan.payload_on:")
    assert lines[0].endswith('as true; quote the payload, e.g. payload_on: "ON"')
    # The example names the field that was wrong (it suggested payload_on for payload_off).
    lines = problems(
        "appliances:\n  fan:\n    preset: plain\n    command_topic: f\n    payload_off: OFF\n"
    )
    assert lines[0].endswith('as false; quote the payload, e.g. payload_off: "OFF"')


def test_check_names_a_folder_given_for_the_rules_file(tmp_path):
    from claudio_daemon import app

    with pytest.raises(app.UserError, match="a folder, not a rules file"):
        app.check_rules(tmp_path, None)
    with pytest.raises(app.UserError, match="rules file not found"):
        app.check_rules(tmp_path / "nope.yaml", None)
    with pytest.raises(app.UserError, match="a folder, not a rules file"):
        app.find_rules(tmp_path)


def test_topic_wildcards_rejected():
    lines = problems("appliances:\n  lamp:\n    preset: tasmota\n    topic: 'lamp/#'\n")
    assert len(lines) == 1 and lines[0].startswith("rules.yaml:4: appliances.lamp.topic:")


def test_away_settings_validation():
    lines = problems("away:\n  sounds: []\n")
    assert lines[0].startswith("rules.yaml:2: away.sounds:")
    lines = problems("away:\n  min_level_db: -40\n  margin_db: 10\n")
    assert "not both" in lines[0]
    rules = parse("away:\n  min_level_db: -40\n")
    assert rules.away.level_threshold(-70.0) == -40.0
    assert parse("away: {}\n").away.level_threshold(-70.0) == -50.0
    assert parse("away:\n  margin_db: null\n").away.level_threshold(-70.0) is None


def test_away_with_chosen_sounds_has_level_alerts_only_when_asked():
    # `sounds: [dog]` means dogs: the default margin (for `sounds: any`) must not add
    # "any loud sound" to it; written out, it does.
    assert parse("away:\n  sounds: [dog]\n").away.level_threshold(-70.0) is None
    assert parse("away:\n  sounds: [dog]\n  margin_db: 20\n").away.level_threshold(-70.0) == -50.0
    assert (
        parse("away:\n  sounds: [dog]\n  min_level_db: -40\n").away.level_threshold(-70.0) == -40.0
    )


def test_defaults_and_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:/other")
    rules = parse("{}\n")
    assert rules.audio.calibration == tmp_path / "state" / "calibration.yaml"
    assert rules.model.path is None and rules.model.classify_every_s == 0.5
    assert rules.sounds.default_threshold == 0.8
    assert rules.triggers == [] and rules.max_clap_count() == 0
    assert parse("audio:\n  calibration: null\n").audio.calibration is None


def test_check_labels_suggests_close_matches(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        BASE
        + "triggers:\n  - sound: glass_breakin\n    actions: [lamp]\n"
        + "away:\n  sounds: [dog, clapping, sirens]\n"
    )
    labels = ["dog", "glass_breaking", "siren", "rain"]
    assert check_file(path, labels) == [
        f"{path}:9: triggers[0].sound: unknown sound label 'glass_breakin' "
        "(did you mean 'glass_breaking'?)",
        f"{path}:12: away.sounds[2]: unknown sound label 'sirens' (did you mean 'siren'?)",
    ]
    assert check_file(path) == []


# --------------------------------------------------------------------------- secrets


def test_secret_from_env(monkeypatch):
    monkeypatch.setenv("CLAUDIO_TEST_PW", "s3cret")
    assert resolve_secret("CLAUDIO_TEST_PW", None) == "s3cret"
    assert resolve_secret(None, None) is None


def test_secret_missing_env_names_it(monkeypatch):
    monkeypatch.delenv("CLAUDIO_TEST_PW", raising=False)
    with pytest.raises(SecretError, match="CLAUDIO_TEST_PW is not set"):
        resolve_secret("CLAUDIO_TEST_PW", None)
    with pytest.raises(SecretError, match="not an environment variable name"):
        resolve_secret("hunter2!", None)
    # A name with lower-case letters may be the password pasted in: it is not shown.
    monkeypatch.delenv("Sommer2024", raising=False)
    for file in (None, "/nonexistent/pw"):
        with pytest.raises(SecretError) as info:
            resolve_secret("Sommer2024", file)
        assert "Sommer2024" not in str(info.value)
        assert "named in password_env" in str(info.value)


def test_secret_from_credentials_directory(monkeypatch, tmp_path):
    (tmp_path / "mqtt-password").write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("CLAUDIO_TEST_PW", raising=False)
    assert resolve_secret(None, "${CREDENTIALS_DIRECTORY}/mqtt-password") == "from-file"
    # env wins when set, the file is the fallback
    assert resolve_secret("CLAUDIO_TEST_PW", "${CREDENTIALS_DIRECTORY}/mqtt-password") == (
        "from-file"
    )
    monkeypatch.setenv("CLAUDIO_TEST_PW", "from-env")
    assert resolve_secret("CLAUDIO_TEST_PW", "${CREDENTIALS_DIRECTORY}/mqtt-password") == (
        "from-env"
    )


def test_secret_file_errors(monkeypatch, tmp_path):
    with pytest.raises(SecretError, match=r"secret file .*nope does not exist"):
        resolve_secret(None, tmp_path / "nope")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        resolve_secret(None, tmp_path / "empty")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY is not set"):
        expand_path("${CREDENTIALS_DIRECTORY}/mqtt-password")


def test_mqtt_password_from_rules_file(monkeypatch, tmp_path):
    (tmp_path / "pw").write_text("pw-in-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    rules = parse("mqtt:\n  username: claudio\n  password_file: ${CREDENTIALS_DIRECTORY}/pw\n")
    assert rules.mqtt.password() == "pw-in-file"


def test_sections_left_empty_mean_defaults():
    rules = parse("mqtt:\nclaps:\nappliances:\ntriggers:\naway:\n")
    assert rules.appliances == {} and rules.triggers == [] and rules.away.armed is False


def test_time_window_must_be_text():
    lines = problems(BASE + "triggers:\n  - claps: 2\n    when: [7]\n    actions: [lamp]\n")
    assert lines == [
        'rules.yaml:10: triggers[0].when[0]: a time window is a quoted string like "22:00-07:00", '
        "not 7"
    ]


def test_same_rules_compare_equal_whatever_the_layout():
    a = parse(BASE + "triggers:\n  - claps: 2\n    actions: [lamp]\n")
    b = parse("# moved around\n" + BASE + "triggers: [{claps: 2, actions: [lamp]}]\n")
    c = parse(BASE + "triggers: [{claps: 3, actions: [lamp]}]\n")
    assert a == b and a != c


def test_device_numbering_the_firmware_would_get_wrong() -> None:
    """Tasmota's POWER0 switches every output at once; a Shelly Plus/Pro (Gen2+) takes no
    Gen1 relay commands and would silently do nothing."""
    (line,) = problems(BASE.replace("    topic: lamp\n", "    topic: lamp\n    channel: 0\n"))
    assert "rules.yaml:2: appliances.lamp" in line and "count from 1" in line
    for device in ("shellyplus1pm-A8032AB12345", "shellypro4pm-X", "shelly1pmg3-8CBF"):
        (line,) = problems(BASE + f"  plug:\n    preset: shelly\n    topic: {device}\n")
        assert "Gen2+" in line and "preset plain" in line, line
    for gen1 in ("shelly1-AB", "shellyplug-s-7C87", "shellyswitch25-1234"):
        assert parse(BASE + f"  plug:\n    preset: shelly\n    topic: {gen1}\n")


def test_relative_model_and_calibration_paths_are_beside_rules_yaml(tmp_path, monkeypatch):
    """`audio: {calibration: calibration.yaml}` in /etc/claudio/rules.yaml: `calibrate` run
    from a home folder wrote ~/calibration.yaml, the service (running in /) read
    /calibration.yaml. Both now mean the file beside rules.yaml."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "rules.yaml"
    path.write_text("model: {path: models/m.onnx}\naudio: {calibration: cal.yaml}\n")
    monkeypatch.chdir(tmp_path)
    rules = load_rules(path)
    assert rules.model.path == folder / "models" / "m.onnx"
    assert rules.audio.calibration == folder / "cal.yaml"
    assert "calibration" in rules.audio.model_fields_set
    path.write_text("model: {path: /abs/m.onnx}\naudio: {calibration: ~/cal.yaml}\n")
    rules = load_rules(path)
    assert rules.model.path == Path("/abs/m.onnx")
    assert rules.audio.calibration == Path.home() / "cal.yaml"
