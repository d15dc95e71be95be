"""Home Assistant MQTT discovery: Claudio shows up as one device with a few entities.

* switch  "Away mode": <prefix>/away/set (command) and <prefix>/away/state (retained state)
* event   "Claps":     <prefix>/claps, event types claps_2, claps_3, ...
* event   "Sound":     <prefix>/sound, event types = recognised labels
* sensor  "Sound level": <prefix>/level in dBFS (diagnostic, for tuning thresholds)
* device triggers for clap patterns (button_double_press, ...), so automations can start
  from "Claudio: clap double press" without templates.

Single-component discovery topics: <discovery_prefix>/<component>/<node_id>/<object_id>/config.
The level sensor has no device_class: HA's `sound_pressure` means a sound pressure level
(dB SPL/dBA), while Claudio measures dBFS relative to the microphone's full scale.
Entity ids are suggested with `default_entity_id` ("domain.slug"), which replaced the
deprecated `object_id` option in Home Assistant 2025.10.
"""

from __future__ import annotations

import re
from typing import Any

from claudio_daemon.mqtt.settings import MqttSettings
from claudio_daemon.mqtt.topics import (
    OFFLINE,
    ONLINE,
    STATE_OFF,
    STATE_ON,
    Topics,
    clap_event_type,
)

Message = tuple[str, dict[str, Any]]

#: Device-trigger types the HA frontend translates ("Claudio: clap double press").
CLAP_TRIGGER_TYPES = {
    1: "button_short_press",
    2: "button_double_press",
    3: "button_triple_press",
    4: "button_quadruple_press",
    5: "button_quintuple_press",
}
CLAP_TRIGGER_SUBTYPE = "clap"


def _slug(text: str) -> str:
    """Lowercase [a-z0-9_], as HA entity ids require."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", text.lower())).strip("_") or "claudio"


def discovery_messages(
    settings: MqttSettings,
    *,
    device_name: str,
    sw_version: str,
    clap_counts: list[int],
    sound_labels: list[str],
    device_triggers: bool = True,
) -> list[Message]:
    """(topic, config) pairs to publish retained; entities without types are left out."""
    topics = Topics(settings.topic_prefix, settings.discovery.prefix)
    node = settings.node_id
    slug = _slug(node)
    device = {
        "identifiers": [f"claudio_{node}"],
        "name": device_name,
        "manufacturer": "Claudio",
        "model": "Claudio sound daemon",
        "sw_version": sw_version,
    }
    origin = {"name": "claudio", "sw_version": sw_version}
    availability = {
        "availability_topic": topics.available,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
    }

    def entity(component: str, object_id: str, name: str, **config: Any) -> Message:
        payload = {
            "name": name,
            "unique_id": f"claudio_{node}_{object_id}",
            "default_entity_id": f"{component}.{slug}_{object_id}",
            **availability,
            "qos": settings.qos,
            "device": device,
            "origin": origin,
            **config,
        }
        return topics.discovery(component, node, object_id), payload

    messages = [
        entity(
            "switch",
            "away",
            "Away mode",
            command_topic=topics.away_set,
            state_topic=topics.away_state,
            payload_on=STATE_ON,
            payload_off=STATE_OFF,
            state_on=STATE_ON,
            state_off=STATE_OFF,
            retain=False,
            optimistic=False,
            icon="mdi:shield-home",
        ),
        entity(
            "sensor",
            "level",
            "Sound level",
            state_topic=topics.level,
            unit_of_measurement="dBFS",
            state_class="measurement",
            suggested_display_precision=1,
            entity_category="diagnostic",
            icon="mdi:waveform",
        ),
    ]
    counts = sorted(set(clap_counts))
    if counts:
        messages.append(
            entity(
                "event",
                "claps",
                "Claps",
                state_topic=topics.claps,
                event_types=[clap_event_type(n) for n in counts],
                icon="mdi:hand-clap",
            )
        )
    labels = sorted(set(sound_labels))
    if labels:
        messages.append(
            entity(
                "event",
                "sound",
                "Sound",
                state_topic=topics.sound,
                event_types=labels,
                icon="mdi:ear-hearing",
            )
        )
    if device_triggers:
        for n in counts:
            event_type = clap_event_type(n)
            trigger = {
                "automation_type": "trigger",
                "topic": topics.claps,
                "type": CLAP_TRIGGER_TYPES.get(n, event_type),
                "subtype": CLAP_TRIGGER_SUBTYPE,
                "payload": event_type,
                "value_template": "{{ value_json.event_type }}",
                "qos": settings.qos,
                "device": device,
                "origin": origin,
            }
            messages.append((topics.discovery("device_automation", node, event_type), trigger))
    return messages
