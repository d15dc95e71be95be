"""The rules.yaml tree: what a person may write, with bounds, descriptions and cross-checks.

Every model forbids unknown keys (a typo is an error, not silence). Checks that span
sections (an action naming an appliance that does not exist, two rules for the same clap
count at the same time) raise `CrossFieldError`, which carries one location per problem so
the loader can point at the exact YAML line of each. Sound labels are checked later
against the loaded model (`loader.check_labels`), since the schema does not know them.
"""

from __future__ import annotations

import os
import re
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from claudio_daemon.config_base import StrictModel
from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.events import Command
from claudio_daemon.mqtt.settings import MqttSettings
from claudio_daemon.rules import presets
from claudio_daemon.service.state import service_state_dir

#: Label that a clap pattern counts as in AWAY mode (ESC-50's name for hand claps).
CLAP_LABEL = "clapping"

Loc = tuple[str | int, ...]

ApplianceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$", strict=True)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]

_TOPIC_BAD = re.compile(r"[+#\x00]")
_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")
_DAY_S = 24 * 3600
#: Default ids of Shelly Plus, Pro and Gen3/4 devices (shellyplus1pm-..., shelly1pmg3-...).
_SHELLY_RPC_ID = re.compile(r"shelly(plus|pro)|shelly[a-z0-9]*g[34]-")
#: How far above the room's noise floor a sound must stand for an AWAY level alert with an
#: absolute min_level_db (the level gate opens at the same margin).
LEVEL_STANDOUT_DB = 6.0


class CrossFieldError(ValueError):
    """Problems that involve more than one field, each with its own location in the file."""

    def __init__(self, problems: list[tuple[Loc, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{_loc_str(loc)}: {msg}" for loc, msg in problems))


def _loc_str(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_topic(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not value or value != value.strip() or _TOPIC_BAD.search(value):
        raise ValueError(
            f"{what} {value!r} must be a non-empty MQTT topic without wildcards (+ #) "
            "or surrounding spaces"
        )
    return value


def _state_dir() -> Path:
    """systemd's StateDirectory= if running as a service, else the XDG state home."""
    service = service_state_dir()
    if service is not None:
        return service
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "claudio"


def default_calibration_path() -> Path:
    return _state_dir() / "calibration.yaml"


# --------------------------------------------------------------------------- sections


class ModelSettings(StrictModel):
    """Which sound classifier runs, and where."""

    path: Path | None = Field(
        None,
        description="ONNX model file (a relative path is beside rules.yaml); unset means the "
        "model shipped with Claudio. The file carries its own labels and front-end settings "
        "in its metadata.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where onnxruntime runs: auto picks CUDA if available, else CPU."
    )
    threads: int = Field(
        2, ge=1, le=64, description="CPU threads for one classification (a Pi 4 has 4 cores)."
    )
    classify_every_s: float = Field(
        0.5,
        ge=0.05,
        le=10.0,
        description="Hop between classifications while sound is active; smaller reacts "
        "faster and costs more CPU.",
    )

    @field_validator("path", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.expandvars(str(v))).expanduser()


class AudioSettings(StrictModel):
    """The microphone."""

    device: str | int | None = Field(
        None,
        description="Input device: a name (or part of one) or an index as listed by "
        "`python -m sounddevice`; unset means the system default.",
    )
    block_size: int = Field(1024, ge=64, le=65536, description="Samples per read from the device.")
    calibration: Path | None = Field(
        default_factory=default_calibration_path,
        description="Calibration file written by `claudio-daemon calibrate` (a relative path "
        "is beside rules.yaml); default "
        "$STATE_DIRECTORY/calibration.yaml (systemd) or ~/.local/state/claudio/calibration.yaml. "
        "null: do not use one. A missing file is not an error: built-in defaults apply.",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("device must be a device name or index")
        if isinstance(v, int) and v < 0:
            raise ValueError("device index must be 0 or more")
        return v

    @field_validator("calibration", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.expandvars(str(v))).expanduser()


class SoundSettings(StrictModel):
    """How classifier scores become sound events."""

    default_threshold: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Lowest score (0..1) for a label to be reported, unless `thresholds` "
        "or a rule's min_score says otherwise. The shipped model is trained with positive "
        "weights, so its scores run high: at 0.8 it makes about 0.3 wrong reports per "
        "sounding clip on held-out ESC-50 audio, at 0.5 about 1.5 (models/README.md).",
    )
    thresholds: dict[Label, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict, description="Per-label score thresholds, e.g. {dog: 0.7}."
    )
    hold_s: float = Field(
        2.0,
        ge=0.0,
        le=3600.0,
        description="Minimum time before the same label is reported again while it "
        "goes on (a barking dog is one event, not one per classification); each sound "
        "rule is held the same way from the first window that reaches its min_score.",
    )

    def threshold(self, label: str) -> float:
        return self.thresholds.get(label, self.default_threshold)


class Appliance(StrictModel):
    """Something switched over MQTT, described by its firmware's conventions."""

    preset: Literal["tasmota", "zigbee2mqtt", "shelly", "plain"] = Field(
        ...,
        description="tasmota: cmnd/<topic>/POWER ON|OFF|TOGGLE; zigbee2mqtt: "
        'zigbee2mqtt/<topic>/set {"state": "ON"}; shelly (Gen1): '
        "shellies/<topic>/relay/<channel>/command on|off|toggle; plain: command_topic and "
        "payload_on/payload_off (payload_toggle optional) given explicitly.",
    )
    topic: str | None = Field(
        None,
        max_length=200,
        description="Device topic (Tasmota), friendly name (Zigbee2MQTT) or device id "
        "(Shelly). Required for those presets.",
    )
    name: str | None = Field(
        None, min_length=1, max_length=100, description="Friendly name for logs and Home Assistant."
    )
    channel: int | None = Field(
        None,
        ge=0,
        le=32,
        description="Relay number: Tasmota POWER<n> from 1 (unset: POWER, the first), Shelly "
        "(Gen1) relay/<n> from 0 (unset: 0).",
    )
    base_topic: str | None = Field(
        None, max_length=200, description="Zigbee2MQTT base topic if not 'zigbee2mqtt'."
    )
    command_topic: str | None = Field(
        None,
        max_length=300,
        description="Topic commands are published to: required for plain, overrides a preset.",
    )
    state_topic: str | None = Field(
        None, max_length=300, description="Topic the device reports its state on (optional)."
    )
    payload_on: str | None = Field(None, max_length=1000, description="Payload for 'on'.")
    payload_off: str | None = Field(None, max_length=1000, description="Payload for 'off'.")
    payload_toggle: str | None = Field(
        None, max_length=1000, description="Payload for 'toggle' (plain: leave out if unsupported)."
    )

    @field_validator("payload_on", "payload_off", "payload_toggle", mode="before")
    @classmethod
    def _payload_text(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool):
            raise ValueError(
                f"YAML read an unquoted ON/OFF/yes/no as {str(v).lower()}; quote the "
                f'payload, e.g. {info.field_name}: "{"ON" if v else "OFF"}"'
            )
        if isinstance(v, (int, float)):
            return str(v)
        return v

    @field_validator("topic", "base_topic", "command_topic", "state_topic", mode="after")
    @classmethod
    def _topics(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _check_topic(v, info.field_name)

    @model_validator(mode="after")
    def _complete(self) -> Appliance:
        if self.preset == "plain":
            missing = [
                f
                for f in ("command_topic", "payload_on", "payload_off")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(f"preset plain needs {', '.join(missing)}")
        elif self.topic is None:
            what = {"tasmota": "device topic", "zigbee2mqtt": "friendly name", "shelly": "id"}
            raise ValueError(f"preset {self.preset} needs topic (the {what[self.preset]})")
        if self.channel is not None and self.preset not in ("tasmota", "shelly"):
            raise ValueError("channel applies to the tasmota and shelly presets only")
        if self.channel == 0 and self.preset == "tasmota":
            # Tasmota's POWER0 switches every output of the device at once.
            raise ValueError(
                "Tasmota relays count from 1 (POWER0 switches them all); leave channel out "
                "for the first"
            )
        if self.preset == "shelly" and self.topic and _SHELLY_RPC_ID.match(self.topic.lower()):
            raise ValueError(
                f"{self.topic!r} looks like a Shelly Plus/Pro (Gen2+), which takes commands "
                "over RPC, not shellies/<id>/relay/<n>/command: use preset plain with its "
                "<id>/rpc topic and Switch.Set payloads"
            )
        if self.base_topic is not None and self.preset != "zigbee2mqtt":
            raise ValueError("base_topic applies to the zigbee2mqtt preset only")
        return self

    def label(self, key: str) -> str:
        return self.name or key

    def message(self, command: Command) -> tuple[str, str]:
        """(topic, payload) for `command` (see presets)."""
        return presets.command_message(self, command)


class ActionSpec(StrictModel):
    """Switch one appliance. Shorthand in YAML: `- lamp: toggle`."""

    appliance: ApplianceName = Field(..., description="Key under `appliances`.")
    command: Command = Field("toggle", description="on, off or toggle.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"appliance": data}
        if isinstance(data, dict) and len(data) == 1 and "appliance" not in data:
            ((key, value),) = data.items()
            data = {"appliance": key, "command": value}
        if isinstance(data, dict) and "command" in data:
            cmd = data["command"]
            # YAML 1.1 reads unquoted on/off as booleans.
            if isinstance(cmd, bool):
                cmd = "on" if cmd else "off"
            elif isinstance(cmd, str):
                cmd = cmd.strip().lower()
            data = {**data, "command": cmd}
        return data


class TimeWindow(StrictModel):
    """A daily time span "HH:MM-HH:MM"; start > end wraps past midnight."""

    start_s: int = Field(..., ge=0, lt=_DAY_S)
    end_s: int = Field(..., ge=0, le=_DAY_S)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _parse_window(data)
        if isinstance(data, (dict, TimeWindow)):
            return data
        raise ValueError(f'a time window is a quoted string like "22:00-07:00", not {data!r}')

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start_s == self.end_s:
            raise ValueError("start and end are equal; leave out `when` to match all day")
        return self

    def spans(self) -> list[tuple[int, int]]:
        """Half-open second-of-day intervals covered, split at midnight."""
        if self.start_s < self.end_s:
            return [(self.start_s, self.end_s)]
        return [(self.start_s, _DAY_S), (0, self.end_s)]

    def contains(self, t: dtime) -> bool:
        s = t.hour * 3600 + t.minute * 60 + t.second
        return any(a <= s < b for a, b in self.spans())

    def __str__(self) -> str:
        def hhmm(s: int) -> str:
            return f"{s // 3600:02d}:{s % 3600 // 60:02d}"

        return f"{hhmm(self.start_s)}-{hhmm(self.end_s)}"


def _parse_window(text: str) -> dict[str, int]:
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"time window {text!r} must look like HH:MM-HH:MM, e.g. 22:00-07:00")
    out = []
    for part, is_end in zip(parts, (False, True), strict=True):
        m = _HHMM.match(part)
        if not m:
            raise ValueError(f"time window {text!r}: {part.strip()!r} is not HH:MM")
        h, mi = int(m.group(1)), int(m.group(2))
        if mi > 59 or h > 24 or (h == 24 and (mi != 0 or not is_end)):
            raise ValueError(
                f"time window {text!r}: {part.strip()!r} is not a time of day "
                "(00:00..23:59, 24:00 only as an end)"
            )
        out.append(h * 3600 + mi * 60)
    return {"start_s": out[0], "end_s": out[1]}


def _windows_overlap(a: list[TimeWindow] | None, b: list[TimeWindow] | None) -> bool:
    if not a or not b:
        return True  # no window = all day
    return any(
        x0 < y1 and y0 < x1
        for wa in a
        for wb in b
        for x0, x1 in wa.spans()
        for y0, y1 in wb.spans()
    )


class Trigger(StrictModel):
    """A clap pattern or a recognised sound that switches appliances."""

    name: str | None = Field(None, min_length=1, max_length=100, description="For logs.")
    enabled: bool = Field(True, description="false keeps the rule in the file but inactive.")
    claps: int | None = Field(
        None, ge=1, le=8, description="Number of claps in the pattern (1..8)."
    )
    sound: Label | None = Field(None, description="Classifier label, e.g. glass_breaking.")
    min_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Lowest score for a sound rule; unset uses sounds.thresholds / "
        "sounds.default_threshold.",
    )
    actions: list[ActionSpec] = Field(
        ..., min_length=1, max_length=32, description="What to switch, in order."
    )
    cooldown_s: float = Field(
        2.0, ge=0.0, le=86400.0, description="After firing, the rule rests this long."
    )
    when: list[TimeWindow] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description='Daily windows "HH:MM-HH:MM" (local time, may wrap midnight) when the '
        "rule is active; unset means always.",
    )

    @field_validator("when", mode="before")
    @classmethod
    def _one_window(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        if (self.claps is None) == (self.sound is None):
            raise ValueError("a trigger needs exactly one of `claps: N` or `sound: label`")
        if self.claps is not None and self.min_score is not None:
            raise ValueError("min_score applies to sound triggers only")
        return self

    @property
    def reason(self) -> str:
        """Stable id of what fired, used in Action.reason."""
        return f"claps:{self.claps}" if self.claps is not None else f"sound:{self.sound}"

    def active_at(self, t: dtime) -> bool:
        return not self.when or any(w.contains(t) for w in self.when)


class AwaySettings(StrictModel):
    """AWAY mode: while armed, sounds in the empty home switch lights on and raise an alert."""

    armed: bool = Field(
        False,
        description="State at start; later changed over MQTT or the CLI (a reload keeps the "
        "current state, and so does a restart of the service until this value is changed).",
    )
    sounds: Literal["any"] | list[Label] = Field(
        "any",
        description=f"Labels that count (`{CLAP_LABEL}` covers clap patterns), or any.",
    )
    min_score: float = Field(
        0.8, ge=0.0, le=1.0, description="Lowest classifier score (see sounds.default_threshold)."
    )
    min_level_db: float | None = Field(
        None,
        ge=-120.0,
        le=0.0,
        description="Any sound at least this loud (dBFS) counts, whatever its label, if it "
        "also stands 6 dB above the room's noise floor (a steady fan is no sound). "
        "Overrides margin_db.",
    )
    margin_db: float | None = Field(
        20.0,
        ge=1.0,
        le=100.0,
        description="Any sound this many dB above the room's noise floor counts (the "
        "level gate's floor, which follows a steady noise within about 10 s). The default "
        "applies with `sounds: any` only: with a list of labels, write it to have level "
        "alerts too. null (with min_level_db unset) disables level alerts: labels only.",
    )
    actions: list[ApplianceName] = Field(
        default_factory=list, max_length=32, description="Appliances switched ON on an alert."
    )
    alert: bool = Field(True, description="Publish an alert event.")
    cooldown_s: float = Field(
        60.0, ge=0.0, le=86400.0, description="After an alert, none for this long."
    )
    arm_delay_s: float = Field(
        60.0, ge=0.0, le=3600.0, description="Time to leave the house after arming."
    )

    @field_validator("sounds", mode="after")
    @classmethod
    def _sounds(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list would never alert; write `sounds: any` or labels")
            if "any" in v:
                raise ValueError("write `sounds: any` on its own, not inside a list")
        return v

    @model_validator(mode="after")
    def _level(self) -> AwaySettings:
        if {"min_level_db", "margin_db"} <= self.model_fields_set and (
            self.min_level_db is not None and self.margin_db is not None
        ):
            raise ValueError("give min_level_db or margin_db, not both")
        return self

    def level_threshold(self, noise_floor_db: float) -> float | None:
        """Level at or above which any sound alerts; None when level alerts are off.

        An absolute min_level_db also asks the sound to stand LEVEL_STANDOUT_DB above the
        room's floor: a fan or dehumidifier louder than min_level_db becomes the floor and
        stops alerting, instead of switching the lamps on every cooldown all night.
        """
        if self.min_level_db is not None:
            return max(self.min_level_db, noise_floor_db + LEVEL_STANDOUT_DB)
        # Someone who lists [dog, glass_breaking] asked for those sounds: a default they
        # never wrote must not add "any loud sound" behind their back.
        chosen = self.sounds == "any" or "margin_db" in self.model_fields_set
        if self.margin_db is not None and chosen:
            return noise_floor_db + self.margin_db
        return None

    def counts(self, label: str) -> bool:
        return self.sounds == "any" or label in self.sounds


# --------------------------------------------------------------------------- root


class RulesFile(StrictModel):
    """Everything in rules.yaml."""

    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Sound classifier.")
    audio: AudioSettings = Field(default_factory=AudioSettings, description="Microphone.")
    claps: ClapSettings = Field(default_factory=ClapSettings, description="Clap detection.")
    sounds: SoundSettings = Field(default_factory=SoundSettings, description="Sound events.")
    appliances: dict[ApplianceName, Appliance] = Field(
        default_factory=dict, max_length=256, description="Things to switch, by name."
    )
    triggers: list[Trigger] = Field(
        default_factory=list, max_length=256, description="Claps/sounds -> actions."
    )
    away: AwaySettings = Field(default_factory=AwaySettings, description="AWAY mode.")

    #: Where each key was in the YAML (set by the loader), for line numbers in later checks.
    _source: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `claps:` with every line below commented out reads as null: mean the defaults.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields)}
        return data

    @model_validator(mode="after")
    def _cross_check(self) -> RulesFile:
        problems = self.cross_problems()
        if problems:
            raise CrossFieldError(problems)
        return self

    def cross_problems(self) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        known = ", ".join(sorted(self.appliances)) or "none defined"

        def check_action(loc: Loc, name: str, command: Command) -> None:
            appliance = self.appliances.get(name)
            if appliance is None:
                problems.append((loc, f"unknown appliance {name!r} (known: {known})"))
            elif not presets.supports(appliance, command):
                problems.append(
                    (loc, f"appliance {name!r} has no payload_{command}; set it or use on/off")
                )

        for i, trig in enumerate(self.triggers):
            for k, act in enumerate(trig.actions):
                check_action(("triggers", i, "actions", k, "appliance"), act.appliance, act.command)
        for k, name in enumerate(self.away.actions):
            check_action(("away", "actions", k), name, "on")

        clap_rules = [
            (i, t) for i, t in enumerate(self.triggers) if t.enabled and t.claps is not None
        ]
        for n, (i, a) in enumerate(clap_rules):
            for j, b in clap_rules[:n]:
                if a.claps == b.claps and _windows_overlap(a.when, b.when):
                    other = f"triggers[{j}]" + (f" ({b.name})" if b.name else "")
                    problems.append(
                        (
                            ("triggers", i, "claps"),
                            f"{a.claps} claps is already used by {other} at overlapping "
                            "times; list both actions in one rule, or give the rules "
                            "`when` windows that do not overlap",
                        )
                    )
                    break
        return problems

    def max_clap_count(self) -> int:
        return max_clap_count(self)

    def sound_labels(self) -> list[tuple[Loc, str]]:
        """Every label the file names, with where (for checking against the model)."""
        out: list[tuple[Loc, str]] = []
        for i, t in enumerate(self.triggers):
            if t.sound is not None:
                out.append((("triggers", i, "sound"), t.sound))
        if isinstance(self.away.sounds, list):
            out += [(("away", "sounds", k), s) for k, s in enumerate(self.away.sounds)]
        out += [(("sounds", "thresholds", label), label) for label in self.sounds.thresholds]
        return out


def max_clap_count(rules: RulesFile) -> int:
    """Largest clap pattern any enabled rule uses (0: none), so the detector can stop
    waiting for more claps as soon as this count is reached."""
    return max((t.claps for t in rules.triggers if t.enabled and t.claps is not None), default=0)
