"""How each kind of smart plug wants to be switched over MQTT.

Kept apart from the schema so the exact topics and payloads live in one table that tests
can check against each vendor's documentation. Commands are never retained: a retained
"ON" would switch the lamp again every time the plug reconnects.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from claudio_daemon.events import Command

if TYPE_CHECKING:
    from claudio_daemon.rules.schema import Appliance

COMMANDS: tuple[Command, ...] = ("on", "off", "toggle")

#: Payload per command for the presets that use plain-text payloads.
_TEXT_PAYLOADS: dict[str, dict[str, str]] = {
    # Tasmota: cmnd/<topic>/POWER  ON | OFF | TOGGLE
    "tasmota": {"on": "ON", "off": "OFF", "toggle": "TOGGLE"},
    # Shelly Gen1: shellies/<id>/relay/<n>/command  on | off | toggle
    "shelly": {"on": "on", "off": "off", "toggle": "toggle"},
}


def default_command_topic(appliance: Appliance) -> str | None:
    """The vendor's command topic for the appliance (None for `plain`, which has no default)."""
    p, t = appliance.preset, appliance.topic
    if p == "tasmota":
        suffix = "" if appliance.channel is None else str(appliance.channel)
        return f"cmnd/{t}/POWER{suffix}"
    if p == "zigbee2mqtt":
        return f"{appliance.base_topic or 'zigbee2mqtt'}/{t}/set"
    if p == "shelly":
        return f"shellies/{t}/relay/{appliance.channel or 0}/command"
    return None


def command_topic(appliance: Appliance) -> str:
    """The topic commands go to: an explicit `command_topic` wins over the preset."""
    topic = appliance.command_topic or default_command_topic(appliance)
    if topic is None:  # the schema makes plain appliances name command_topic
        raise ValueError(f"appliance preset {appliance.preset!r} needs command_topic")
    return topic


def default_payload(appliance: Appliance, command: Command) -> str | None:
    if appliance.preset == "zigbee2mqtt":
        return json.dumps({"state": command.upper()})
    table = _TEXT_PAYLOADS.get(appliance.preset)
    return None if table is None else table[command]


def payload(appliance: Appliance, command: Command) -> str | None:
    """Payload for `command`; an explicit payload_on/off/toggle wins over the preset.

    None when the appliance cannot do the command (a `plain` one without payload_toggle).
    """
    override = {
        "on": appliance.payload_on,
        "off": appliance.payload_off,
        "toggle": appliance.payload_toggle,
    }[command]
    return override if override is not None else default_payload(appliance, command)


def supports(appliance: Appliance, command: Command) -> bool:
    return payload(appliance, command) is not None


def command_message(appliance: Appliance, command: Command) -> tuple[str, str]:
    """(topic, payload) that makes the appliance do `command`."""
    body = payload(appliance, command)
    if body is None:
        raise ValueError(f"appliance has no payload for {command!r}; set payload_{command}")
    return command_topic(appliance), body


def state_topic(appliance: Appliance) -> str | None:
    """Where the device reports its state (explicit state_topic wins), None if unknown."""
    if appliance.state_topic is not None:
        return appliance.state_topic
    p, t = appliance.preset, appliance.topic
    if p == "tasmota":
        suffix = "" if appliance.channel is None else str(appliance.channel)
        return f"stat/{t}/POWER{suffix}"
    if p == "zigbee2mqtt":
        return f"{appliance.base_topic or 'zigbee2mqtt'}/{t}"
    if p == "shelly":
        return f"shellies/{t}/relay/{appliance.channel or 0}"
    return None
