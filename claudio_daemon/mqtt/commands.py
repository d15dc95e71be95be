"""Turn payloads received over MQTT into typed commands, or refuse them.

Anything on the network is hostile until proven otherwise: payloads are size-checked,
decoded as UTF-8, parsed with `json.loads` at most, then validated against a tiny closed
vocabulary. Nothing received is ever evaluated, unpickled or executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

#: Larger payloads are refused before decoding: no legitimate command is near this size.
MAX_PAYLOAD_BYTES = 1024

_TRUE = frozenset({"on", "true"})
_FALSE = frozenset({"off", "false"})


class CommandError(ValueError):
    """A received payload that is not a valid command; the message says why."""


@dataclass(frozen=True)
class RemoteCommand:
    """A validated command from MQTT.

    Delivered to `MqttPublisher(on_command=...)` from paho's network thread: the receiver
    should only hand it to a queue and return.
    """

    kind: Literal["away"]
    value: bool
    topic: str
    #: True when the broker replayed a retained message (someone published the command with
    #: retain, so it comes back on every reconnect); the daemon may choose to ignore those.
    retained: bool = False


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise CommandError(f"expected ON/OFF/true/false, got {_short(value)}")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def parse_away(payload: bytes, topic: str, *, retained: bool = False) -> RemoteCommand:
    """Parse an AWAY command: ON/OFF/true/false (any case) or JSON {"away": true}."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise CommandError(f"payload is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    if not text:
        raise CommandError("empty payload")
    if text[0] == "{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CommandError(f"invalid JSON: {e.msg} at column {e.colno}") from e
        except RecursionError as e:
            # ~1000 '[' fit under MAX_PAYLOAD_BYTES and exhaust json's recursion limit.
            raise CommandError("invalid JSON: nested too deeply") from e
        except ValueError as e:  # anything else json may refuse: still just a bad command
            raise CommandError(f"invalid JSON: {e}") from e
        if not isinstance(data, dict) or set(data) != {"away"}:
            raise CommandError('JSON command must be exactly {"away": true|false}')
        value = data["away"]
        if not isinstance(value, bool):
            raise CommandError(f'"away" must be a JSON boolean, got {_short(value)}')
        return RemoteCommand("away", value, topic, retained)
    return RemoteCommand("away", _as_bool(text), topic, retained)


def describe_payload(payload: bytes, limit: int = 80) -> str:
    """A log-safe view of an untrusted payload: repr (no control characters), truncated."""
    head = payload[:limit]
    suffix = f"... ({len(payload)} bytes)" if len(payload) > limit else ""
    return repr(head) + suffix
