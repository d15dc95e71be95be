"""Home Assistant discovery: the configs field by field, retained, and re-sent when HA restarts."""

from __future__ import annotations

import json
import re
import time

import paho.mqtt.publish as mqtt_publish
import pytest

from claudio_daemon.mqtt.discovery import discovery_messages
from claudio_daemon.mqtt.publisher import MqttPublisher
from claudio_daemon.mqtt.settings import MqttSettings
from tests.fixtures.broker import Subscriber

AVAILABILITY = {
    "availability_topic": "claudio/available",
    "payload_available": "online",
    "payload_not_available": "offline",
}


def messages(settings: MqttSettings | None = None, **kwargs) -> dict[str, dict]:
    args = dict(
        device_name="Living room",
        sw_version="1.2.3",
        clap_counts=[3, 2, 2],
        sound_labels=["dog", "glass_breaking"],
    )
    args.update(kwargs)
    s = settings or MqttSettings(client_id="claudio-pi", discovery={"node_id": "pi"})
    return dict(discovery_messages(s, **args))


def test_topics() -> None:
    assert sorted(messages()) == [
        "homeassistant/device_automation/pi/claps_2/config",
        "homeassistant/device_automation/pi/claps_3/config",
        "homeassistant/event/pi/claps/config",
        "homeassistant/event/pi/sound/config",
        "homeassistant/sensor/pi/level/config",
        "homeassistant/switch/pi/away/config",
    ]


def test_shared_device_and_origin() -> None:
    device = {
        "identifiers": ["claudio_pi"],
        "name": "Living room",
        "manufacturer": "Claudio",
        "model": "Claudio sound daemon",
        "sw_version": "1.2.3",
    }
    for config in messages().values():
        assert config["device"] == device
        assert config["origin"] == {"name": "claudio", "sw_version": "1.2.3"}


def test_away_switch() -> None:
    config = messages()["homeassistant/switch/pi/away/config"]
    expected = {
        "name": "Away mode",
        "unique_id": "claudio_pi_away",
        "default_entity_id": "switch.pi_away",
        **AVAILABILITY,
        "qos": 1,
        "command_topic": "claudio/away/set",
        "state_topic": "claudio/away/state",
        "payload_on": "ON",
        "payload_off": "OFF",
        "state_on": "ON",
        "state_off": "OFF",
        "retain": False,
        "optimistic": False,
    }
    assert {k: config[k] for k in expected} == expected
    assert "object_id" not in config  # deprecated by HA 2025.10 in favour of default_entity_id


def test_clap_and_sound_events() -> None:
    msgs = messages()
    claps = msgs["homeassistant/event/pi/claps/config"]
    assert claps["state_topic"] == "claudio/claps"
    assert claps["event_types"] == ["claps_2", "claps_3"]  # sorted, unique
    assert claps["unique_id"] == "claudio_pi_claps"
    assert claps["default_entity_id"] == "event.pi_claps"
    sound = msgs["homeassistant/event/pi/sound/config"]
    assert sound["state_topic"] == "claudio/sound"
    assert sound["event_types"] == ["dog", "glass_breaking"]
    for config in (claps, sound):
        assert {k: config[k] for k in AVAILABILITY} == AVAILABILITY


def test_level_sensor_has_no_device_class() -> None:
    config = messages()["homeassistant/sensor/pi/level/config"]
    assert config["state_topic"] == "claudio/level"
    assert config["unit_of_measurement"] == "dBFS"
    assert config["state_class"] == "measurement"
    assert config["entity_category"] == "diagnostic"
    assert "device_class" not in config  # dBFS is not a sound pressure level
    assert {k: config[k] for k in AVAILABILITY} == AVAILABILITY


def test_device_triggers() -> None:
    msgs = messages(clap_counts=[2, 3, 7])
    double = msgs["homeassistant/device_automation/pi/claps_2/config"]
    assert double == {
        "automation_type": "trigger",
        "topic": "claudio/claps",
        "type": "button_double_press",
        "subtype": "clap",
        "payload": "claps_2",
        "value_template": "{{ value_json.event_type }}",
        "qos": 1,
        "device": double["device"],
        "origin": double["origin"],
    }
    triggers = "homeassistant/device_automation/pi/claps_{}/config"
    assert msgs[triggers.format(3)]["type"] == "button_triple_press"
    assert msgs[triggers.format(7)]["type"] == "claps_7"
    types = [(c["type"], c["subtype"]) for t, c in msgs.items() if "device_automation" in t]
    assert len(set(types)) == len(types)  # type+subtype must be unique per device


def test_unique_ids_are_unique_and_ids_are_valid() -> None:
    s = MqttSettings(client_id="Claudio-Living.Room", topic_prefix="home/claudio")
    msgs = messages(s)
    entities = [c for t, c in msgs.items() if "device_automation" not in t]
    ids = [c["unique_id"] for c in entities]
    assert len(set(ids)) == len(ids)
    for config in entities:
        assert re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", config["default_entity_id"])
        assert config["availability_topic"] == "home/claudio/available"
    assert all("/Claudio-Living_Room/" in t for t in msgs)


def test_empty_lists_leave_entities_out() -> None:
    topics = set(messages(clap_counts=[], sound_labels=[]))
    assert topics == {
        "homeassistant/sensor/pi/level/config",
        "homeassistant/switch/pi/away/config",
    }


@pytest.mark.parametrize("custom_prefix", ["homeassistant", "ha"])
def test_published_retained_and_resent_when_ha_comes_online(mosquitto, custom_prefix) -> None:
    s = MqttSettings(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id="claudio-disc",
        reconnect_min_s=0.1,
        discovery={"prefix": custom_prefix, "node_id": "disc"},
    )
    configs = discovery_messages(
        s, device_name="Hall", sw_version="0.1", clap_counts=[2], sound_labels=["dog"]
    )
    n = len(configs)
    publisher = MqttPublisher(s)
    publisher.publish_discovery(configs)
    publisher.start()
    try:
        assert publisher.wait_subscribed(5)
        assert publisher.flush(5)
        # A late subscriber (HA starting) gets every config retained, exactly as built.
        pattern = f"{custom_prefix}/+/disc/+/config"
        with Subscriber(mosquitto.host, mosquitto.port, [pattern]) as sub:
            got = sub.wait_for(lambda m: len(m) >= n)
            assert {t: json.loads(p) for t, p, _ in got} == dict(configs)
            assert all(retain for _, _, retain in got)
            # HA restarts: its birth message asks for discovery again.
            mqtt_publish.single(
                f"{custom_prefix}/status",
                "online",
                qos=1,
                hostname=mosquitto.host,
                port=mosquitto.port,
            )
            again = sub.wait_for(lambda m: len(m) >= 2 * n)[n:]
            assert {t: json.loads(p) for t, p, _ in again} == dict(configs)
            # Anything else on the status topic is not a reason to re-send.
            mqtt_publish.single(
                f"{custom_prefix}/status",
                "offline",
                qos=1,
                hostname=mosquitto.host,
                port=mosquitto.port,
            )
            assert publisher.flush(2)
            with pytest.raises(AssertionError):
                sub.wait_for(lambda m: len(m) > 2 * n, timeout=0.5)
    finally:
        publisher.stop(timeout=2)


def test_configure_discovery_uses_version_and_lists(mosquitto) -> None:
    from claudio_daemon import __version__

    s = MqttSettings(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id="claudio-conf",
        discovery={"node_id": "conf"},
    )
    publisher = MqttPublisher(s)
    publisher.configure_discovery(clap_counts=[3, 2], sound_labels=["dog"], device_name="Den")
    publisher.start()
    try:
        assert publisher.flush(5)
        topics = ["homeassistant/event/conf/+/config"]
        with Subscriber(mosquitto.host, mosquitto.port, topics) as sub:
            got = {t: json.loads(p) for t, p, _ in sub.wait_for(lambda m: len(m) >= 2)}
    finally:
        publisher.stop(timeout=2)
    claps = got["homeassistant/event/conf/claps/config"]
    assert claps["event_types"] == ["claps_2", "claps_3"]
    assert claps["device"]["name"] == "Den"
    assert claps["device"]["sw_version"] == __version__
    assert got["homeassistant/event/conf/sound/config"]["event_types"] == ["dog"]


def test_only_announced_clap_counts_are_sent_as_events(mosquitto) -> None:
    """Rules for two and three claps announce claps_2 and claps_3; a stray single clap was
    still sent as claps_1, which Home Assistant logs as an invalid event type and drops.
    The pattern stays on <prefix>/event, which is not an HA entity."""
    from claudio_daemon.events import ClapPattern

    s = MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="claudio-counts")
    for guest in (False, True):  # a service, and `replay --publish` beside it
        publisher = MqttPublisher(s, guest=guest)
        publisher.configure_discovery(clap_counts=[2, 3], sound_labels=[])
        publisher.start()
        topics = ["claudio/claps", "claudio/event", "homeassistant/#"]
        try:
            assert publisher.wait_connected(5)
            with Subscriber(mosquitto.host, mosquitto.port, topics) as sub:
                for n in (1, 2, 4, 3):
                    publisher.publish_event(ClapPattern(n, tuple(range(n)), 100, -20.0))
                assert publisher.flush(5)
                sub.wait_for(lambda m: len([x for x in m if x[0] == "claudio/event"]) >= 4)
                time.sleep(0.2)
        finally:
            publisher.stop(timeout=2)
        got = [(t, p) for t, p, kept in sub.messages if p and not kept]  # sent now
        types = [json.loads(p)["event_type"] for t, p in got if t == "claudio/claps"]
        assert types == ["claps_2", "claps_3"], guest
        events = [json.loads(p)["count"] for t, p in got if t == "claudio/event"]
        assert events == [1, 2, 4, 3], guest
        # The guest announces nothing (the service's configs arrive retained, from before).
        announced = [t for t, _ in got if t.startswith("homeassistant/")]
        assert not (guest and announced), announced


def test_discovery_disabled_publishes_nothing(mosquitto) -> None:
    s = MqttSettings(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id="claudio-nodisc",
        discovery={"enabled": False, "node_id": "nodisc"},
    )
    publisher = MqttPublisher(s)
    publisher.publish_discovery(
        discovery_messages(s, device_name="x", sw_version="0", clap_counts=[2], sound_labels=[])
    )
    assert publisher.pending == 0
    publisher.start()
    try:
        assert publisher.wait_subscribed(5)
        with Subscriber(mosquitto.host, mosquitto.port, ["homeassistant/+/nodisc/+/config"]) as sub:
            mqtt_publish.single(
                "homeassistant/status",
                "online",
                qos=1,
                hostname=mosquitto.host,
                port=mosquitto.port,
            )
            with pytest.raises(AssertionError):
                sub.wait_for(lambda m: m, timeout=0.5)
    finally:
        publisher.stop(timeout=2)
