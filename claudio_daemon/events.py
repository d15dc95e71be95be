"""Typed messages that flow one way through the pipeline: detectors -> rules -> MQTT.

Every time is a sample index at the model's sample rate, counted from the start of the
stream, so a replay behaves exactly like a live run. Seconds appear only at the edges
(JSON output, MQTT payloads) through `to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Command = Literal["on", "off", "toggle"]


@dataclass(frozen=True)
class Clap:
    """One transient accepted as a hand clap."""

    sample: int
    level_db: float
    #: Detector's confidence that the transient is a clap, 0..1.
    score: float = 1.0


@dataclass(frozen=True)
class ClapPattern:
    """A finished group of claps: the unit that rules match on."""

    count: int
    clap_samples: tuple[int, ...]
    #: When the grouper decided the pattern was complete (silence or max count).
    decided_sample: int
    level_db: float

    @property
    def sample(self) -> int:
        return self.decided_sample


@dataclass(frozen=True)
class SoundEvent:
    """A classifier label above its threshold for the window ending at `sample`."""

    label: str
    score: float
    level_db: float
    sample: int


@dataclass(frozen=True)
class LevelReading:
    """Sound level of the last stretch of audio, published so people can tune thresholds."""

    level_db: float
    noise_floor_db: float
    sample: int


@dataclass(frozen=True)
class Action:
    """A command to an appliance, decided by a rule."""

    appliance: str
    command: Command
    topic: str
    payload: str
    sample: int
    #: Which rule fired, e.g. "claps:2", "sound:dog", "away".
    reason: str
    retain: bool = False


@dataclass(frozen=True)
class Alert:
    """AWAY mode noticed a sound while armed."""

    label: str | None
    score: float | None
    level_db: float
    sample: int


@dataclass(frozen=True)
class ModeChange:
    """AWAY mode armed or disarmed (from rules.yaml, MQTT or the CLI)."""

    away: bool
    source: str
    sample: int


Event = ClapPattern | SoundEvent | LevelReading | Alert | ModeChange | Action

_TYPE_NAMES: dict[type, str] = {
    ClapPattern: "claps",
    SoundEvent: "sound",
    LevelReading: "level",
    Alert: "alert",
    ModeChange: "mode",
    Action: "action",
}


def to_dict(event: Event, sample_rate: int) -> dict[str, Any]:
    """The stable JSON shape of an event (see README, "JSON events").

    `type` and `time` (seconds from the start of the stream) come first; fields are
    never removed, only added.
    """

    def sec(sample: int) -> float:
        return round(sample / sample_rate, 4)

    kind = _TYPE_NAMES[type(event)]
    out: dict[str, Any] = {"type": kind, "time": sec(event.sample)}
    if isinstance(event, ClapPattern):
        out.update(
            count=event.count,
            claps=[sec(s) for s in event.clap_samples],
            level_db=round(event.level_db, 1),
        )
    elif isinstance(event, SoundEvent):
        out.update(
            label=event.label, score=round(event.score, 4), level_db=round(event.level_db, 1)
        )
    elif isinstance(event, LevelReading):
        out.update(level_db=round(event.level_db, 1), noise_floor_db=round(event.noise_floor_db, 1))
    elif isinstance(event, Alert):
        out.update(
            label=event.label,
            score=None if event.score is None else round(event.score, 4),
            level_db=round(event.level_db, 1),
        )
    elif isinstance(event, ModeChange):
        out.update(away=event.away, source=event.source)
    elif isinstance(event, Action):
        out.update(
            appliance=event.appliance,
            command=event.command,
            topic=event.topic,
            payload=event.payload,
            reason=event.reason,
        )
    return out
