"""Small JSON files in the service's state directory (systemd's StateDirectory=).

Only a daemon started by systemd has one ($STATE_DIRECTORY): what is kept there (the AWAY
state, the Home Assistant entities announced) is about the installed service, so a daemon
run by hand in a terminal keeps none of it and follows rules.yaml alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from claudio_daemon.files import replace_file

log = logging.getLogger(__name__)


def service_state_dir() -> Path | None:
    state = os.environ.get("STATE_DIRECTORY")
    if not state:
        return None
    return Path(state.split(":")[0])


class StateFile:
    """One JSON document, replaced atomically. Never raises: a full or read-only disk
    must not stop the daemon, it only loses what the file kept, which the log says once."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._write_failed = False

    def read(self) -> Any | None:
        """The document, or None when there is none or it cannot be read (said)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.unreadable(exc)
            return None

    def unreadable(self, why: object) -> None:
        log.warning("%s: unreadable %s (%s); not used", self.path, self.what, why)

    def write(self, data: Any) -> None:
        try:
            replace_file(self.path, json.dumps(data) + "\n")
        except OSError as exc:
            if not self._write_failed:
                log.warning("cannot save the %s to %s (%s)", self.what, self.path, exc)
            self._write_failed = True
            return
        self._write_failed = False
