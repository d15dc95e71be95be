"""The calibration file: what one room and one microphone sound like.

A calibration run measures the background level and a few claps, and stores the result
here so the clap detector's threshold matches the room rather than a guess. Applying it
never loosens the absolute safety limits in `ClapSettings`; it only moves the values the
measurement is about.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from claudio_daemon.config_base import StrictModel
from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.files import replace_file


class CalibrationError(ValueError):
    """A calibration file is missing, unreadable or invalid (the message names the file)."""


def _clap_setting(name: str, description: str) -> Any:
    """The clap detector's own default and bounds for one of its settings: a file without
    the value keeps the default, and a file can only suggest what `ClapSettings` accepts
    (one place to change either)."""
    src = ClapSettings.model_fields[name]
    bounds = {b: getattr(m, b) for m in src.metadata for b in ("ge", "le") if hasattr(m, b)}
    return Field(src.default, description=description, **bounds)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Calibration(StrictModel):
    """Measured room and microphone values, written by `claudio-daemon calibrate`."""

    device: str = Field("default", max_length=300, description="Input device name used.")
    sample_rate: int = Field(22050, ge=8000, le=192000, description="Rate the values refer to.")
    noise_floor_db: float = Field(
        ..., ge=-160.0, le=0.0, description="Background level (dBFS) of the high-passed signal."
    )
    clap_level_db: float = Field(
        ..., ge=-160.0, le=0.0, description="Typical clap peak level (dBFS), median of the claps."
    )
    onset_threshold_db: float = Field(
        ..., ge=3.0, le=60.0, description="Suggested onset threshold above the noise floor (dB)."
    )
    min_gap_s: float = _clap_setting("min_gap_s", "Suggested shortest clap gap.")
    max_gap_s: float = _clap_setting("max_gap_s", "Suggested longest clap gap.")
    end_silence_s: float = _clap_setting("end_silence_s", "Suggested end silence.")
    created: str = Field(
        default_factory=_now_iso, description="When the calibration was made (ISO 8601)."
    )

    @field_validator("created")
    @classmethod
    def _iso(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        if self.clap_level_db <= self.noise_floor_db:
            raise ValueError(
                f"clap_level_db ({self.clap_level_db}) must be above noise_floor_db "
                f"({self.noise_floor_db})"
            )
        if self.min_gap_s >= self.max_gap_s:
            raise ValueError(
                f"min_gap_s ({self.min_gap_s}) must be smaller than max_gap_s ({self.max_gap_s})"
            )
        return self


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(file)"
        parts.append(f"field {loc!r}: {err['msg']}")
    return "; ".join(parts)


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file (.json, or YAML for any other suffix)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read calibration file: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path}, line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise CalibrationError(f"{path}{where}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: expected a mapping of calibration fields")
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        raise CalibrationError(f"{path}: invalid calibration: {_format_errors(exc)}") from exc


def save_calibration(cal: Calibration, path: str | Path) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file."""
    path = Path(path)
    data = cal.model_dump(mode="json")
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=True)
    try:
        # 0644 whatever the umask of the root shell calibrate ran in: the service's user
        # reads it. A link (say into /var/lib/claudio) is followed.
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, text, mode=0o644)
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot write calibration file: {exc}") from exc


#: The clap settings a calibration sets.
CALIBRATED = ("onset_threshold_db", "min_level_db", "min_gap_s", "max_gap_s", "end_silence_s")


def apply_calibration(
    settings: ClapSettings, cal: Calibration, keep: Collection[str] = ()
) -> ClapSettings:
    """Settings with the calibrated threshold, level floor and gaps, except those in
    `keep`: what the user wrote under `claps:` in rules.yaml wins over a measurement.

    The absolute floor is put halfway (in dB) between the measured background and the
    measured clap level, but never above what the settings already ask for minus a margin
    of quiet claps (claps vary by ~10 dB), and never below the user's floor: calibration
    sharpens, it does not make the detector accept quieter sounds than configured.
    """
    midpoint = (cal.noise_floor_db + cal.clap_level_db) / 2.0
    min_level = max(settings.min_level_db, min(midpoint, cal.clap_level_db - 12.0))
    min_gap = cal.min_gap_s
    max_gap = max(cal.max_gap_s, min_gap + 0.05)
    end_silence = max(cal.end_silence_s, min_gap)
    calibrated = {
        "onset_threshold_db": cal.onset_threshold_db,
        "min_level_db": float(min(0.0, min_level)),
        "min_gap_s": min_gap,
        "max_gap_s": max_gap,
        "end_silence_s": end_silence,
    }
    data = settings.model_dump()
    data.update({k: v for k, v in calibrated.items() if k not in keep})
    try:
        return ClapSettings.model_validate(data)
    except ValidationError:
        # A kept gap that contradicts a calibrated one (min_gap_s above the calibrated
        # max_gap_s): the gaps are one decision, so the user's win together.
        for name in ("min_gap_s", "max_gap_s", "end_silence_s"):
            data[name] = getattr(settings, name)
        return ClapSettings.model_validate(data)
