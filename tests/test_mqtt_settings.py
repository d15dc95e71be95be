"""The mqtt: settings section: strict, helpful, and never holding a plain password."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from claudio_daemon.mqtt.settings import MqttSettings
from claudio_daemon.mqtt.topics import Topics
from claudio_daemon.rules.loader import RulesError, parse_rules
from claudio_daemon.rules.secrets import SecretError, resolve_secret

#: What a user might paste into password_env by mistake.
PASTED = "S3cr3t-Pa55!word"


def test_defaults() -> None:
    s = MqttSettings()
    assert (s.host, s.port, s.qos, s.queue_max) == ("localhost", 1883, 1, 1000)
    assert s.topic_prefix == "claudio"
    assert s.client_id.startswith("claudio-")
    assert s.discovery.enabled and s.discovery.prefix == "homeassistant"
    assert s.tls.enabled is False and s.tls.insecure is False
    assert s.password() is None


def test_plain_password_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as info:
        MqttSettings(username="u", password="hunter2")
    text = str(info.value)
    assert "password_env" in text and "password_file" in text
    assert "hunter2" not in text
    assert info.value.errors()[0]["loc"] == ("password",)


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ValidationError, match="hots"):
        MqttSettings(hots="broker")


@pytest.mark.parametrize("prefix", ["", "a/#", "a/+/b", "/claudio", "claudio/"])
def test_bad_topic_prefix(prefix: str) -> None:
    with pytest.raises(ValidationError, match="topic_prefix"):
        MqttSettings(topic_prefix=prefix)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port"),
        ({"qos": 3}, "qos"),
        ({"queue_max": 1}, "queue_max"),
        ({"reconnect_min_s": 10, "reconnect_max_s": 1}, "reconnect_min_s"),
        ({"password_env": "MQTT_PW"}, "need a username"),
        ({"tls": {"enabled": True, "cert_file": "/c.pem"}}, "key_file"),
        ({"discovery": {"node_id": "bad id!"}}, "node_id"),
        ({"username": "u", "password_env": "not a name!"}, "environment variable name"),
    ],
)
def test_invalid_combinations(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttSettings(**kwargs)


def _rules_with_password_env() -> None:
    parse_rules(
        "mqtt:\n"
        "  host: 127.0.0.1\n"
        "  username: claudio\n"
        f'  password_env: "{PASTED}"\n'
        "appliances:\n"
        "  lamp: {preset: tasmota, topic: lamp}\n"
        "triggers:\n"
        "  - claps: 2\n"
        "    actions: [lamp: toggle]\n"
    )


@pytest.mark.parametrize(
    ("load", "error"),
    [
        (_rules_with_password_env, RulesError),
        (lambda: MqttSettings(username="u", password_env=PASTED), ValidationError),
        (lambda: resolve_secret(PASTED, None), SecretError),
    ],
    ids=["rules.yaml", "settings", "resolve_secret"],
)
def test_password_pasted_into_password_env_is_not_echoed(load, error) -> None:
    with pytest.raises(error) as info:
        load()
    text = str(info.value)
    assert "password_env" in text and "environment variable" in text
    assert PASTED not in text, text


def test_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDIO_TEST_PW", "s3cret")
    assert MqttSettings(username="u", password_env="CLAUDIO_TEST_PW").password() == "s3cret"


def test_password_env_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLAUDIO_TEST_PW", raising=False)
    with pytest.raises(ValueError, match="CLAUDIO_TEST_PW"):
        MqttSettings(username="u", password_env="CLAUDIO_TEST_PW").password()


def test_password_file_under_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mqtt").write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = MqttSettings(username="u", password_file="${CREDENTIALS_DIRECTORY}/mqtt")
    assert s.password() == "from-file"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ValueError, match="CREDENTIALS_DIRECTORY"):
        s.password()


def test_node_id_and_topics() -> None:
    s = MqttSettings(client_id="claudio-living.room", topic_prefix="home/claudio")
    assert s.node_id == "claudio-living_room"
    assert MqttSettings(discovery={"node_id": "den"}).node_id == "den"
    t = Topics(s.topic_prefix, s.discovery.prefix)
    assert (t.available, t.event, t.alert, t.level) == (
        "home/claudio/available",
        "home/claudio/event",
        "home/claudio/alert",
        "home/claudio/level",
    )
    assert (t.away_state, t.away_set, t.claps, t.sound, t.ha_status) == (
        "home/claudio/away/state",
        "home/claudio/away/set",
        "home/claudio/claps",
        "home/claudio/sound",
        "homeassistant/status",
    )
