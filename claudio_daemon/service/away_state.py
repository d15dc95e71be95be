"""AWAY mode survives a restart of the service.

Someone arms the house from their phone and leaves; overnight the Pi reboots after an
update, or systemd restarts the daemon after a crash. rules.yaml's `away.armed` is only the
state at start, so without this the house would come back disarmed, silently, until the
owner is home again.

The state lives in systemd's StateDirectory (`$STATE_DIRECTORY/away.json`, mode 0600 under
the unit's UMask) and only there: a daemon run by hand in a terminal keeps following
rules.yaml, as a replay does. The file records which `armed` value rules.yaml had when the
state was saved: when someone has since changed that value, the file's new word is the
latest and wins; otherwise the saved state does.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

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
    state = os.environ.get("STATE_DIRECTORY")
    if not state:
        return None
    return Path(state.split(":")[0]) / FILE_NAME


def starting_state(rules_armed: bool, saved: SavedAway | None) -> tuple[bool, str]:
    """The AWAY state to start in, and the reason for the log."""
    if saved is None or saved.rules_armed != rules_armed:
        return rules_armed, "rules.yaml"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved.saved_at))
    return saved.armed, f"restored: set by {saved.source} at {when}"


class AwayStore:
    """Reads and writes the saved AWAY state; never raises (a full or read-only disk must
    not stop the daemon, it only loses the state over a restart, which the log says)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_failed = False

    def load(self) -> SavedAway | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return SavedAway(
                armed=_as_bool(data["armed"]),
                source=str(data["source"]),
                saved_at=float(data["saved_at"]),
                rules_armed=_as_bool(data["rules_armed"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s: unreadable AWAY state (%s); starting as rules.yaml says", self.path, exc
            )
            return None

    def save(self, armed: bool, source: str, rules_armed: bool) -> None:
        data = {
            "armed": armed,
            "source": source,
            "saved_at": time.time(),
            "rules_armed": rules_armed,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._write_failed:
                log.warning(
                    "cannot save the AWAY state to %s (%s): a restart will start as "
                    "rules.yaml says",
                    self.path,
                    exc,
                )
            self._write_failed = True
            return
        self._write_failed = False


def _as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value
