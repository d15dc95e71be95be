"""AWAY commands over MQTT: strict parsing, and only valid ones reach the daemon."""

from __future__ import annotations

import json
import logging
import pickle
import queue

import paho.mqtt.publish as mqtt_publish
import pytest

from claudio_daemon.events import Action
from claudio_daemon.mqtt import publisher as publisher_module
from claudio_daemon.mqtt.commands import (
    MAX_PAYLOAD_BYTES,
    CommandError,
    RemoteCommand,
    describe_payload,
    parse_away,
)
from claudio_daemon.mqtt.publisher import MqttPublisher
from claudio_daemon.mqtt.settings import MqttSettings
from tests.fixtures.broker import Subscriber

TOPIC = "claudio/away/set"
LAMP = "cmnd/lamp/POWER"
#: 1008 bytes, under MAX_PAYLOAD_BYTES, yet deep enough to exhaust json's recursion limit.
DEEP_JSON = b'{"away":' + b"[" * 1000


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"ON", True),
        (b"OFF", False),
        (b"on", True),
        (b"off", False),
        (b"true", True),
        (b"false", False),
        (b"  On\n", True),
        (b'{"away": true}', True),
        (b'{"away": false}', False),
        (b' {"away":true} ', True),
    ],
)
def test_valid_away_payloads(payload: bytes, value: bool) -> None:
    assert parse_away(payload, TOPIC) == RemoteCommand("away", value, TOPIC, False)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"maybe", "expected ON/OFF"),
        (b"1", "expected ON/OFF"),
        (b"yes", "expected ON/OFF"),
        (b"\xff\xfeON", "UTF-8"),
        (b"O" * (MAX_PAYLOAD_BYTES + 1), "exceeds"),
        (b'{"away": "ON"}', "JSON boolean"),
        (b'{"away": 1}', "JSON boolean"),
        (b'{"away": null}', "JSON boolean"),
        (b'{"away": true, "exec": "rm -rf /"}', "exactly"),
        (b'{"AWAY": true}', "exactly"),
        (b"{}", "exactly"),
        (b'{"away": tru', "invalid JSON"),
        (b"[true]", "expected ON/OFF"),
        (b'"ON"', "expected ON/OFF"),
        (b"__import__('os').system('true')", "expected ON/OFF"),
        (pickle.dumps(True), "UTF-8"),
    ],
)
def test_malformed_away_payloads_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        parse_away(payload, TOPIC)


def test_huge_payload_is_refused_before_decoding() -> None:
    # Invalid UTF-8 beyond the limit: the size check must come first.
    with pytest.raises(CommandError, match="exceeds"):
        parse_away(b"\xff" * 5000, TOPIC)


def test_deeply_nested_json_is_a_command_error() -> None:
    assert len(DEEP_JSON) <= MAX_PAYLOAD_BYTES
    with pytest.raises(CommandError, match="nested too deeply"):
        parse_away(DEEP_JSON, TOPIC)


def test_retained_flag_is_carried() -> None:
    assert parse_away(b"ON", TOPIC, retained=True).retained is True


def test_describe_payload_is_truncated_and_escaped() -> None:
    text = describe_payload(b"\x1b[31m" + b"A" * 500)
    assert "\x1b" not in text
    assert "\\x1b" in text
    assert "(505 bytes)" in text
    assert len(text) < 120


def test_only_valid_commands_reach_on_command(mosquitto, caplog) -> None:
    received: queue.Queue[RemoteCommand] = queue.Queue()
    settings = MqttSettings(
        host=mosquitto.host, port=mosquitto.port, client_id="cmd-test", discovery={"enabled": False}
    )
    bad = [
        b"maybe",
        b"\xff\xfe",
        b"X" * 4096,
        b'{"away": "yes"}',
        json.dumps({"away": True, "extra": 1}).encode(),
        pickle.dumps({"away": True}),
    ]
    good = [(b"ON", True), (b'{"away": false}', False), (b"true", True), (b"OFF", False)]
    caplog.set_level(logging.WARNING, logger="claudio_daemon.mqtt.publisher")
    publisher = MqttPublisher(settings, on_command=received.put)
    publisher.start()
    try:
        assert publisher.wait_connected(5)
        assert publisher.wait_subscribed(5)
        # Valid commands interleaved with bad ones; all published in this order.
        msgs = [
            {"topic": TOPIC, "payload": p, "qos": 1}
            for p in (bad[:3] + [good[0][0]] + bad[3:] + [g[0] for g in good[1:]])
        ]
        mqtt_publish.multiple(msgs, hostname=mosquitto.host, port=mosquitto.port)
        got = [received.get(timeout=5) for _ in good]
        assert [c.value for c in got] == [v for _, v in good]
        assert all(c.kind == "away" and c.topic == TOPIC and not c.retained for c in got)
        assert received.empty()
    finally:
        publisher.stop(timeout=2)
    ignored = [r for r in caplog.records if "ignored command" in r.getMessage()]
    assert len(ignored) == len(bad)
    # The huge payload is logged truncated, never in full.
    assert all(len(r.getMessage()) < 300 for r in ignored)


def _assert_client_still_works(
    settings: MqttSettings, hostile: bytes, caplog, warning: str
) -> None:
    """After `hostile` on the command topic, commands still arrive and publishes still go out.

    paho re-raises exceptions from callbacks, which would end its network thread for good.
    """
    received: queue.Queue[RemoteCommand] = queue.Queue()
    caplog.set_level(logging.WARNING, logger="claudio_daemon.mqtt.publisher")
    publisher = MqttPublisher(settings, on_command=received.put)
    publisher.start()
    try:
        assert publisher.wait_connected(5) and publisher.wait_subscribed(5)
        with Subscriber(settings.host, settings.port, [LAMP]) as sub:
            sub.client.publish(TOPIC, hostile, qos=1).wait_for_publish(5)
            sub.client.publish(TOPIC, b"ON", qos=1).wait_for_publish(5)
            assert received.get(timeout=5).value is True
            publisher.send_action(Action("lamp", "toggle", LAMP, "TOGGLE", 0, "claps:2"))
            assert publisher.flush(5), "not acknowledged: paho's network thread is dead"
            assert sub.wait_for(lambda m: m, 5)[0][1] == b"TOGGLE"
        assert received.empty()
    finally:
        publisher.stop(timeout=2)
    warnings = [r.getMessage() for r in caplog.records if warning in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert len(warnings[0]) < 300


def test_deeply_nested_json_does_not_stop_the_client(mosquitto, caplog) -> None:
    settings = MqttSettings(
        host=mosquitto.host, port=mosquitto.port, client_id="cmd-deep", discovery={"enabled": False}
    )
    _assert_client_still_works(settings, DEEP_JSON, caplog, "nested too deeply")


def test_any_failure_handling_a_message_stays_out_of_paho(mosquitto, caplog, monkeypatch) -> None:
    real_parse = publisher_module.parse_away

    def parse(payload: bytes, topic: str, *, retained: bool = False) -> RemoteCommand:
        if payload == b"boom":
            raise RuntimeError("unexpected bug")
        return real_parse(payload, topic, retained=retained)

    monkeypatch.setattr(publisher_module, "parse_away", parse)
    settings = MqttSettings(
        host=mosquitto.host, port=mosquitto.port, client_id="cmd-boom", discovery={"enabled": False}
    )
    _assert_client_still_works(settings, b"boom", caplog, "RuntimeError: unexpected bug")
