"""AWAY mode survives a restart of the service.

Someone arms the house from their phone and leaves; overnight the Pi reboots after an
update, or systemd restarts the daemon after a crash. rules.yaml's `away.armed` is only the
state at start, so without this the house would come back disarmed, silently, until the
owner is home again.

The state lives in the service's state directory (`away.json`, see state.py): a daemon run
by hand in a terminal keeps following rules.yaml, as a replay does. The file records which
`armed` value rules.yaml had when the state was saved: when someone has since changed that
value, the file's new word is the latest and wins; otherwise the saved state does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from claudio_daemon.service.state import StateFile, service_state_dir

FILE_NAME = "away.json"


@dataclass(frozen=True)
class SavedAway:
    armed: bool
    #: Who changed it last ("mqtt", "rules.yaml", ...).
    source: str
    #: Seconds since the epoch (wall clock: for the log line, never for decisions).
    saved_at: float
    #: rules.yaml's `away.armed` at that moment.
    rules_armed: bool


def service_state_path() -> Path | None:
    """Where the service keeps the AWAY state, or None outside systemd."""
    folder = service_state_dir()
    return folder / FILE_NAME if folder is not None else None


def starting_state(rules_armed: bool, saved: SavedAway | None) -> tuple[bool, str]:
    """The AWAY state to start in, and the reason for the log."""
    if saved is None or saved.rules_armed != rules_armed:
        return rules_armed, "rules.yaml"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved.saved_at))
    return saved.armed, f"restored: set by {saved.source} at {when}"


class AwayStore:
    """The saved AWAY state; a file that cannot be trusted counts as none (said)."""

    def __init__(self, path: Path) -> None:
        self.file = StateFile(path, "AWAY state")

    def load(self) -> SavedAway | None:
        data = self.file.read()
        if data is None:
            return None
        try:
            return SavedAway(
                armed=_as_bool(data["armed"]),
                source=str(data["source"]),
                saved_at=float(data["saved_at"]),
                rules_armed=_as_bool(data["rules_armed"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            self.file.unreadable(exc)
            return None

    def save(self, armed: bool, source: str, rules_armed: bool) -> None:
        self.file.write(
            {"armed": armed, "source": source, "saved_at": time.time(), "rules_armed": rules_armed}
        )


def _as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value
