"""MqttPublisher against a real Mosquitto: topics, payloads, availability, outages, auth, TLS."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from claudio_daemon.events import Action, Alert, ClapPattern, LevelReading, SoundEvent, to_dict
from claudio_daemon.mqtt.publisher import MqttPublisher, publish_once
from claudio_daemon.mqtt.settings import MqttSettings
from tests.fixtures.broker import Subscriber

ROOT = Path(__file__).resolve().parents[1]
SR = 22050
LAMP = "cmnd/lamp/POWER"


def lamp(payload: str = "TOGGLE", sample: int = 0) -> Action:
    """A toggle, or a numbered command ("A1"...) for order tests: those are not toggles,
    since two unsent toggles of one device cancel out."""
    return Action(
        "lamp", "toggle" if payload == "TOGGLE" else "on", LAMP, payload, sample, "claps:2"
    )


def settings_for(broker, **overrides) -> MqttSettings:
    values = dict(
        host=broker.host,
        port=broker.port,
        client_id=f"claudio-test-{os.getpid()}",
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        keepalive_s=10,
    )
    values.update(overrides)
    return MqttSettings(**values)


@pytest.fixture
def started() -> Iterator[list[MqttPublisher]]:
    """Publishers to stop after the test even when it fails."""
    publishers: list[MqttPublisher] = []
    yield publishers
    for p in publishers:
        p.stop(timeout=1)


def start(publishers: list[MqttPublisher], settings: MqttSettings, **kwargs) -> MqttPublisher:
    p = MqttPublisher(settings, **kwargs)
    publishers.append(p)
    p.start()
    return p


def test_exact_topics_and_payloads(mosquitto, started) -> None:
    with Subscriber(mosquitto.host, mosquitto.port, ["#"]) as sub:
        p = start(started, settings_for(mosquitto))
        assert p.wait_connected(5)
        clap = ClapPattern(
            count=2, clap_samples=(22050, 33075), decided_sample=44100, level_db=-12.34
        )
        sound = SoundEvent(label="dog", score=0.91234, level_db=-20.0, sample=66150)
        alert = Alert(label="glass_breaking", score=0.8, level_db=-15.0, sample=88200)
        before = datetime.now().astimezone().replace(microsecond=0)  # "ts" has milliseconds
        p.send_action(lamp())
        p.publish_event(clap)
        p.publish_event(sound)
        p.publish_alert(alert)
        p.publish_level(LevelReading(level_db=-42.345, noise_floor_db=-60.0, sample=1))
        p.publish_away_state(True)
        assert p.flush(5)
        assert p.pending == 0
        msgs = sub.wait_for(lambda m: any(t == "claudio/away/state" for t, _, _ in m))

    by_topic: dict[str, list[tuple[bytes, bool]]] = {}
    for topic, payload, retain in msgs:
        by_topic.setdefault(topic, []).append((payload, retain))
    assert by_topic[LAMP] == [(b"TOGGLE", False)]
    assert by_topic["claudio/available"] == [(b"online", False)]
    assert by_topic["claudio/claps"] == [(b'{"event_type":"claps_2","count":2}', False)]
    assert by_topic["claudio/sound"] == [(b'{"event_type":"dog","score":0.9123}', False)]
    assert by_topic["claudio/level"] == [(b"-42.3", False)]
    # Delivered live, so the retain flag is not set for this subscriber (MQTT 3.1.1).
    assert by_topic["claudio/away/state"] == [(b"ON", False)]

    events = [json.loads(payload) for payload, _ in by_topic["claudio/event"]]
    for got, event in zip(events, [clap, sound], strict=True):
        ts = datetime.fromisoformat(got.pop("ts"))
        assert before <= ts <= datetime.now().astimezone()
        assert got == to_dict(event, SR)
    assert events[0]["count"] == 2 and events[1]["label"] == "dog"
    [(alert_payload, _)] = by_topic["claudio/alert"]
    alert_json = json.loads(alert_payload)
    alert_json.pop("ts")
    assert alert_json == to_dict(alert, SR)

    # Retained state is what a late subscriber (e.g. HA after a restart) sees first.
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/away/state"]) as late:
        assert late.wait_for(lambda m: m)[0] == ("claudio/away/state", b"ON", True)


def test_clean_stop_publishes_offline_retained(mosquitto, started, caplog) -> None:
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/available"]) as sub:
        p = start(started, settings_for(mosquitto))
        sub.wait_for(lambda m: [x[1] for x in m] == [b"online"])
        p.send_action(lamp())
        with caplog.at_level("WARNING"):
            assert p.stop(timeout=3) is True
        # A clean stop is not an error in the journal (paho's loop thread complains about
        # the closed socket on its way out).
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert not p.connected
        sub.wait_for(lambda m: [x[1] for x in m] == [b"online", b"offline"])
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/available"]) as late:
        assert late.wait_for(lambda m: m) == [("claudio/available", b"offline", True)]
    # A clean DISCONNECT ("... disconnected."), not a dropped socket ("disconnected: <why>").
    assert f"Client {p.settings.client_id} disconnected.\n" in mosquitto.logs()


def test_last_will_when_process_is_killed(mosquitto) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from claudio_daemon.mqtt.publisher import MqttPublisher, publish_once
        from claudio_daemon.mqtt.settings import MqttSettings
        p = MqttPublisher(MqttSettings(host={mosquitto.host!r}, port={mosquitto.port},
                                       client_id="claudio-doomed"))
        p.start()
        assert p.wait_connected(10)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/available"]) as sub:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, cwd=ROOT
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            sub.wait_for(lambda m: [x[1] for x in m] == [b"online"])
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        sub.wait_for(lambda m: [x[1] for x in m] == [b"online", b"offline"])
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/available"]) as late:
        assert late.wait_for(lambda m: m) == [("claudio/available", b"offline", True)]


def test_broker_restart_loses_no_action_and_keeps_order(mosquitto, started) -> None:
    # A persistent subscriber session: the broker keeps QoS 1 messages for it across the restart.
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP], client_id="lamp") as sub:
        p = start(started, settings_for(mosquitto))
        assert p.wait_connected(5)
        p.send_action(lamp("A0"))
        assert p.flush(5)
        mosquitto.stop()
        deadline = time.monotonic() + 5
        while p.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not p.connected
        for i in range(1, 6):
            p.send_action(lamp(f"A{i}"))
        assert p.pending == 5
        assert not p.flush(0.3)  # nothing can be acknowledged while the broker is down
        mosquitto.start()
        assert p.flush(10)
        expected = [f"A{i}".encode() for i in range(6)]
        msgs = sub.wait_for(lambda m: [x[1] for x in m if x[1] != b"A0"] == expected[1:], 10)
    payloads = [payload for _, payload, _ in msgs]
    # Mosquitto may re-deliver A0 to the persistent session after its restart (at-least-once).
    assert [x for i, x in enumerate(payloads) if x not in payloads[:i]] == expected


class ForgetfulClient(mqtt.Client):
    """A client library that loses its in-flight messages on reconnect (what the outbox guards)."""

    def _messages_reconnect_reset_out(self) -> None:
        with self._out_message_mutex:
            self._out_messages.clear()
            self._inflight_messages = 0


@pytest.mark.parametrize("client", ["paho", "forgetful"])
def test_in_flight_actions_survive_a_broker_crash(mosquitto, started, client) -> None:
    """Actions sent to a hung broker (never acknowledged) arrive after it crashes and returns."""
    factory = None
    if client == "forgetful":
        factory = lambda s: ForgetfulClient(  # noqa: E731
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id
        )
    # The publisher reconnects 1.5 s after the crash; the test's subscriber is back first.
    p = start(
        started,
        settings_for(mosquitto, reconnect_min_s=1.5, reconnect_max_s=2),
        client_factory=factory,
    )
    p.resend_grace_s = 0.3
    assert p.wait_connected(5)
    mosquitto.pause()
    for i in range(3):
        p.send_action(lamp(f"F{i}"))  # written to the socket, never acknowledged
    time.sleep(0.2)
    assert p.pending == 3
    mosquitto.kill()
    for i in range(3, 5):
        p.send_action(lamp(f"F{i}"))  # queued while the broker is gone
    mosquitto.start()
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP]) as sub:
        assert p.flush(10)
        expected = [f"F{i}".encode() for i in range(5)]
        msgs = sub.wait_for(lambda m: len(m) >= 5, 5)
    assert [x[1] for x in msgs] == expected


def test_started_while_broker_is_down(mosquitto, started, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="claudio_daemon.mqtt.publisher")
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP], client_id="early") as sub:
        mosquitto.stop()
        p = start(started, settings_for(mosquitto))
        p.send_action(lamp("EARLY"))
        assert not p.wait_connected(0.3)
        assert any("cannot reach broker" in r.getMessage() for r in caplog.records)
        mosquitto.start()
        assert p.wait_connected(5)
        assert p.flush(5)
        assert sub.wait_for(lambda m: m, 5)[0][1] == b"EARLY"


def test_commands_too_old_to_mean_anything_are_dropped_not_sent_late(
    mosquitto, started, caplog
) -> None:
    """Claps for the lamp during a long broker outage must not switch it when the broker
    returns (a toggle queued minutes ago would surprise, two would flicker); a command
    younger than mqtt.command_max_age_s still goes."""
    caplog.set_level(logging.WARNING, logger="claudio_daemon.mqtt.publisher")
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP], client_id="late") as sub:
        p = start(started, settings_for(mosquitto, command_max_age_s=1.0))
        _broker_gone(p, mosquitto)
        p.send_action(lamp("OLD"))
        time.sleep(1.5)
        p.send_action(lamp("FRESH"))
        mosquitto.start()
        assert p.flush(10)
        msgs = sub.wait_for(lambda m: m, 5)
        time.sleep(0.3)
        assert [x[1] for x in sub.messages] == [b"FRESH"], msgs
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and LAMP in dropped[0] and "command_max_age_s" in dropped[0]


def _broker_gone(p: MqttPublisher, broker) -> None:  # noqa: ANN001
    """A connected publisher, then the broker stopped and the loss noticed."""
    assert p.wait_connected(5)
    broker.stop()
    deadline = time.monotonic() + 5
    while p.connected and time.monotonic() < deadline:
        time.sleep(0.01)


def _stale_command_in_flight(broker, started, resend_grace_s: float) -> MqttPublisher:  # noqa: ANN001
    """A toggle written to the socket of a hung broker, never acknowledged, older than
    command_max_age_s by the time the broker is killed and started again."""
    p = start(
        started,
        settings_for(broker, reconnect_min_s=1.5, reconnect_max_s=2, command_max_age_s=1.0),
    )
    p.resend_grace_s = resend_grace_s
    assert p.wait_connected(5)
    broker.pause()
    p.send_action(lamp("STALE"))
    time.sleep(0.2)
    assert p.pending == 1
    broker.kill()
    time.sleep(1.0)
    broker.start()
    return p


def test_an_expired_command_in_flight_is_not_resent_by_paho(mosquitto, started, caplog) -> None:
    """A toggle handed over just before the broker hung and died (never acknowledged):
    paho re-sends what it had in flight on reconnecting, so the lamp switched whenever
    the broker came back, however old the command."""
    caplog.set_level(logging.WARNING, logger="claudio_daemon.mqtt.publisher")
    p = _stale_command_in_flight(mosquitto, started, resend_grace_s=0.3)
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP]) as sub:
        assert p.wait_connected(10)
        assert p.flush(10)
        time.sleep(0.5)
        assert sub.messages == []
    assert any("dropped cmnd/lamp/POWER" in r.getMessage() for r in caplog.records)


def test_a_withheld_expired_command_does_not_hold_back_new_ones(mosquitto, started) -> None:
    """The expired command paho was told not to re-send was still awaited as if paho would:
    for resend_grace_s after the reconnect, every new command (a clap just now) waited."""
    p = _stale_command_in_flight(mosquitto, started, resend_grace_s=5.0)
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP]) as sub:
        assert p.wait_connected(10)
        sent = time.monotonic()
        p.send_action(lamp("NOW"))
        sub.wait_for(lambda m: m, 5)
        waited = time.monotonic() - sent
    assert [x[1] for x in sub.messages] == [b"NOW"]
    assert waited < 2.5, f"a new command waited {waited:.1f} s behind a withheld one"


def test_two_toggles_waiting_for_the_broker_cancel_out(mosquitto, started, caplog) -> None:
    """Clapping the lamp on and off again while the broker is away left it as it was; sent
    together when the broker returned, the two toggles flashed it. An "on" between two
    toggles keeps all three in order."""
    caplog.set_level(logging.INFO, logger="claudio_daemon.mqtt.publisher")
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP], client_id="toggles") as sub:
        p = start(started, settings_for(mosquitto))
        _broker_gone(p, mosquitto)
        for action in (lamp(), lamp(), Action("lamp", "on", LAMP, "ON", 0, "claps:3"), lamp()):
            p.send_action(action)
        assert p.pending == 2
        mosquitto.start()
        assert p.flush(10)
        sub.wait_for(lambda m: len(m) >= 2, 5)
        time.sleep(0.3)
        assert [x[1] for x in sub.messages] == [b"ON", b"TOGGLE"]
    said = [r.getMessage() for r in caplog.records if "cancel out" in r.getMessage()]
    assert said == [f"MQTT: two toggles of {LAMP} waited for the broker; they cancel out"]


def test_a_toggle_too_old_to_send_does_not_cancel_a_fresh_one(mosquitto, started, caplog) -> None:
    """Clapped once, then again minutes later, the broker away all along: the first toggle
    is too old to be sent (command_max_age_s) and the second is what the user wants now.
    They cancelled out, and the lamp did nothing."""
    caplog.set_level(logging.INFO, logger="claudio_daemon.mqtt.publisher")
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP], client_id="late") as sub:
        p = start(started, settings_for(mosquitto, command_max_age_s=1.0))
        _broker_gone(p, mosquitto)
        p.send_action(lamp())
        time.sleep(1.2)
        p.send_action(lamp())
        mosquitto.start()
        assert p.flush(10)
        sub.wait_for(lambda m: len(m) >= 1, 5)
        time.sleep(0.3)
        assert [x[1] for x in sub.messages] == [b"TOGGLE"]
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "cancel out" in m]
    assert len([m for m in said if m.startswith(f"MQTT: dropped {LAMP} b'TOGGLE'")]) == 1


def _ride_out_an_outage(broker, started) -> None:  # noqa: ANN001
    """A connected publisher, the broker down for ~10 reconnect attempts, then back."""
    p = start(started, settings_for(broker, reconnect_min_s=0.1, reconnect_max_s=0.2))
    assert p.wait_connected(5)
    broker.stop()
    time.sleep(2.5)
    broker.start()
    assert p.wait_connected(5)


def test_broker_outage_is_one_warning_not_an_error_per_retry(mosquitto, started, caplog) -> None:
    # paho logs "Client is not connected" at ERROR on every reconnect attempt; with the
    # defaults that is one ERROR a minute in the journal for as long as the broker is down.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="claudio_daemon.mqtt.publisher.paho")
    _ride_out_an_outage(mosquitto, started)
    paho = [r for r in caplog.records if r.getMessage().startswith("Client is not connected")]
    assert paho, "expected paho's not-connected lines in the DEBUG trace"
    assert all(r.levelno == logging.DEBUG for r in paho)
    loud = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING
    ]
    errors = [m for m in loud if m.startswith(("ERROR", "CRITICAL"))]
    # At most paho's one line about the dropped socket, whatever the number of retries.
    assert len(errors) <= 1 and "not connected" not in "".join(errors), "\n".join(loud)
    assert sum("cannot reach broker" in m for m in loud) == 1, "\n".join(loud)


def test_broker_outage_writes_no_paho_line_per_retry_at_info(mosquitto, started) -> None:
    """What the journal gets at the daemon's own --log-level info, through its handler:
    relabelling paho's line as DEBUG is not enough if it is still written."""
    import io

    from claudio_daemon.service import logs

    buf = io.StringIO()
    handler = logs.setup_logging("info", journald=False, stream=buf)
    try:
        _ride_out_an_outage(mosquitto, started)
    finally:
        logging.getLogger().removeHandler(handler)
    written = buf.getvalue()
    assert "cannot reach broker" in written
    assert "Client is not connected" not in written, written


def test_mqtt_v5(mosquitto, started) -> None:
    p = start(started, settings_for(mosquitto, protocol="5"))
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP, "claudio/available"]) as sub:
        _assert_delivers(mosquitto, p)
        msgs = sub.wait_for(lambda m: any(t == LAMP for t, _, _ in m))
        assert (LAMP, b"ON", False) in msgs
    assert "(p5," in mosquitto.logs()  # the broker saw protocol level 5


def test_full_outbox_drops_levels_and_events_before_commands(mosquitto, started, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="claudio_daemon.mqtt.publisher")
    s = settings_for(mosquitto, queue_max=10)
    p = MqttPublisher(s)  # not started yet: everything waits in the outbox
    started.append(p)
    for i in range(4):
        p.send_action(lamp(f"C{i}"))
    for i in range(8):
        p.publish_event(SoundEvent(label="dog", score=0.5, level_db=-20.0, sample=i))
    p.publish_level(LevelReading(level_db=-30.0, noise_floor_db=-60.0, sample=0))
    p.publish_level(LevelReading(level_db=-31.0, noise_floor_db=-60.0, sample=1))
    assert p.pending == 10
    assert any("outbox full" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    for i in range(4, 12):
        p.send_action(lamp(f"C{i}"))  # pushes out every event, then the oldest commands
    assert p.pending == 10
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("dropped command" in r.getMessage() for r in errors)

    with Subscriber(mosquitto.host, mosquitto.port, ["#"]) as sub:
        p.start()
        assert p.flush(5)
        msgs = sub.wait_for(lambda m: sum(x[0] == LAMP for x in m) >= 10)
    commands = [payload for topic, payload, _ in msgs if topic == LAMP]
    assert commands == [f"C{i}".encode() for i in range(2, 12)]
    assert not [t for t, _, _ in msgs if t in ("claudio/event", "claudio/sound", "claudio/level")]


def test_only_latest_level_waits_in_the_outbox(mosquitto, started) -> None:
    p = MqttPublisher(settings_for(mosquitto))
    started.append(p)
    for i in range(50):
        p.publish_level(LevelReading(level_db=-60.0 + i, noise_floor_db=-70.0, sample=i))
    assert p.pending == 1
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/level"]) as sub:
        p.start()
        assert p.flush(5)
        assert sub.wait_for(lambda m: m) == [("claudio/level", b"-11.0", False)]


def test_stop_with_broker_down_reports_lost_commands(mosquitto, caplog) -> None:
    caplog.set_level(logging.INFO, logger="claudio_daemon.mqtt.publisher")
    p = MqttPublisher(settings_for(mosquitto))
    p.start()
    assert p.wait_connected(5)
    mosquitto.stop()
    p.send_action(lamp())
    t0 = time.monotonic()
    assert p.stop(timeout=0.5) is False
    assert time.monotonic() - t0 < 3
    assert any(
        r.levelno == logging.ERROR and "1 undelivered command" in r.getMessage()
        for r in caplog.records
    )


def test_refused_credentials_never_count_as_connected(mosquitto_auth, started, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="claudio_daemon.mqtt.publisher")
    monkeypatch.setenv("CLAUDIO_TEST_MQTT_PW", "wrong-" + mosquitto_auth.password)
    s = settings_for(mosquitto_auth, username="claudio", password_env="CLAUDIO_TEST_MQTT_PW")
    caplog.set_level(logging.DEBUG, logger="claudio_daemon.mqtt.publisher")
    p = start(started, s)
    assert not p.wait_connected(2.5)
    assert not p.connected
    refused = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert refused and refused[0].levelno == logging.ERROR
    assert "authori" in refused[0].getMessage().lower()  # "Not authorized"
    assert mosquitto_auth.password not in caplog.text
    # Retried every half second, told once: not an ERROR a minute all night.
    again = [r for r in caplog.records if "refused again" in r.getMessage()]
    assert len(again) >= 2 and len(refused) == 1, (len(again), len(refused))


def test_password_from_env(mosquitto_auth, started, monkeypatch) -> None:
    monkeypatch.setenv("CLAUDIO_TEST_MQTT_PW", mosquitto_auth.password)
    s = settings_for(mosquitto_auth, username="claudio", password_env="CLAUDIO_TEST_MQTT_PW")
    _assert_delivers(mosquitto_auth, start(started, s))


def test_password_from_credentials_file(mosquitto_auth, started, tmp_path, monkeypatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt").write_text(mosquitto_auth.password + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = settings_for(
        mosquitto_auth, username="claudio", password_file="${CREDENTIALS_DIRECTORY}/mqtt"
    )
    _assert_delivers(mosquitto_auth, start(started, s))


def test_a_password_fixed_in_its_file_is_taken_without_a_restart(
    mosquitto_auth, started, tmp_path, monkeypatch
) -> None:
    """The password was read once at start: fixing a typo in the credential file (or
    rotating it) was refused on every retry until the service restarted."""
    pw = tmp_path / "mqtt"
    pw.write_text("typo-" + mosquitto_auth.password + "\n")
    s = settings_for(mosquitto_auth, username="claudio", password_file=str(pw))
    p = start(started, s)
    assert not p.wait_connected(1.5)
    pw.write_text(mosquitto_auth.password + "\n")
    _assert_delivers(mosquitto_auth, p)


def test_tls_with_private_ca(mosquitto_tls, started) -> None:
    s = settings_for(mosquitto_tls, tls={"enabled": True, "ca_file": mosquitto_tls.ca_file})
    _assert_delivers(mosquitto_tls, start(started, s))


def test_tls_files_from_the_credentials_directory(
    mosquitto_tls, started, tmp_path, monkeypatch
) -> None:
    """systemd's LoadCredential= can hand over the CA (or a client key) as for the password."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-ca.pem").write_bytes(Path(mosquitto_tls.ca_file).read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    tls = {"enabled": True, "ca_file": "${CREDENTIALS_DIRECTORY}/mqtt-ca.pem"}
    _assert_delivers(mosquitto_tls, start(started, settings_for(mosquitto_tls, tls=tls)))


def test_tls_refuses_an_unknown_ca(mosquitto_tls, started, tmp_path) -> None:
    from tests.fixtures.broker import make_ca_and_server_cert

    other_ca, _, _ = make_ca_and_server_cert(tmp_path)
    s = settings_for(mosquitto_tls, tls={"enabled": True, "ca_file": other_ca})
    p = start(started, s)
    assert not p.wait_connected(1.0)


def _assert_delivers(broker, p: MqttPublisher) -> None:
    assert p.wait_connected(5)
    p.send_action(lamp("ON"))
    assert p.flush(5)
    if hasattr(broker, "username"):
        assert f"u'{broker.username}'" in broker.logs()  # logged in as that user


def test_publish_once_for_the_cli(mosquitto_auth, started, monkeypatch) -> None:
    """`claudio away on` publishes a command next to a running daemon without kicking it out."""
    monkeypatch.setenv("CLAUDIO_TEST_MQTT_PW", mosquitto_auth.password)
    s = settings_for(mosquitto_auth, username="claudio", password_env="CLAUDIO_TEST_MQTT_PW")
    commands = []
    daemon = start(started, s, on_command=commands.append)
    assert daemon.wait_subscribed(5)
    publish_once(s, "claudio/away/set", "ON")
    deadline = time.monotonic() + 5
    while not commands and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(c.kind, c.value) for c in commands] == [("away", True)]
    assert daemon.connected  # a distinct client id: the daemon was not disconnected
    logs = mosquitto_auth.logs()
    assert f"Client {s.client_id} disconnected" not in logs
    assert "already connected" not in logs

    monkeypatch.setenv("CLAUDIO_TEST_MQTT_PW", "wrong")
    with pytest.raises(ConnectionRefusedError, match="refused"):
        publish_once(s, "claudio/away/set", "ON", timeout=2)
    mosquitto_auth.stop()
    with pytest.raises(OSError):
        publish_once(s, "claudio/away/set", "ON", timeout=2)
