"""Live reload of rules.yaml: edit the file (or `systemctl reload`) and it takes effect.

No thread and no inotify: the daemon already runs a loop every audio block, so it calls
`Reloader.check()` there. Polling a stat() a couple of times a second costs nothing, works on
every filesystem (NFS, bind mounts, a Pi's SD card) and sees editors that replace the file by
rename, which an inotify watch on the old inode would miss.

A broken edit never replaces working rules: the loader's error is logged as one line and the
previous rules keep running. `apply` swaps the rules, so nothing queued (MQTT messages) is
touched by a reload; claps in progress are kept too unless the `claps:` settings changed.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from claudio_daemon.service.notify import SystemdNotifier

log = logging.getLogger(__name__)

__all__ = ["FileWatcher", "ReloadResult", "Reloader"]

T = TypeVar("T")

# (mtime_ns, size, inode, device): cheap to get, and any real edit changes at least one.
_Signature = tuple[int, int, int, int, int]
#: Stand for the content and the signature of a file that exists but cannot be read.
_UNREADABLE = b"unreadable"
_OUT_OF_REACH: _Signature = (-1, -1, -1, -1, -1)


class FileWatcher:
    """Tells when a file's content changed, by polling; the caller owns the loop.

    A change is reported only once the file's stat signature has stayed the same across two
    polls, so a file caught half-written by an editor that saves in place is read once it is
    complete rather than rejected as broken. A touch that leaves the content identical is not
    a change (content hash). A file that is briefly missing (rename-over, editor swap) is
    waited for, not reported.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        min_interval_s: float = 0.5,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._requested = False
        self._last_poll: float | None = None
        self._pending: _Signature | None = None
        self._sig: _Signature | None = None
        self._digest: bytes | None = None
        # Baseline now, so the content the daemon loaded at start is not reported as new.
        self._sig = self._stat()
        if self._sig is not None:
            self._digest = self._hash()

    def request(self) -> None:
        """Make the next `poll()` report a change whatever the file looks like (SIGHUP).

        Only sets a flag, so it is safe from a signal handler or another thread.
        """
        self._requested = True

    def poll(self, now_monotonic: float | None = None) -> bool:
        """True when the content changed since the last reported change (or a request came).

        Cheap to call every audio block: between `min_interval_s` it does nothing at all.
        """
        now = self._clock() if now_monotonic is None else now_monotonic
        if self._requested:
            self._requested = False
            self._last_poll = now
            self._pending = None
            self._sig = self._stat()
            self._digest = self._hash() if self._sig is not None else None
            return True
        if self._last_poll is not None and now - self._last_poll < self.min_interval_s:
            return False
        self._last_poll = now

        sig = self._stat()
        if sig is None or sig == self._sig:
            self._pending = None
            return False
        if sig != self._pending:
            self._pending = sig  # still moving (or just changed): look again next poll
            return False
        self._pending = None
        digest = self._hash()
        if digest is None:  # vanished between stat and read
            return False
        if digest == _UNREADABLE and self._digest == _UNREADABLE:
            self._sig = sig
            return False  # still unreadable: said once
        self._sig = sig
        if digest == self._digest:
            return False  # touched, or rewritten with the same bytes
        self._digest = digest
        return True

    def _stat(self) -> _Signature | None:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            # There, but out of reach (a folder made 0700): a change to report once, like
            # an unreadable file, not a file that vanished.
            log.debug("cannot stat %s: %s", self.path, exc)
            return _OUT_OF_REACH
        # ctime: a chmod that makes a rejected edit readable is a change too.
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)

    def _hash(self) -> bytes | None:
        """The content's hash; None when the file is gone, _UNREADABLE when it is there but
        cannot be read (an edit saved as root with mode 0600): that is a change too, so the
        loader says why the edit is not applied instead of nothing at all."""
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return _UNREADABLE


class ReloadResult(enum.Enum):
    UNCHANGED = "unchanged"
    RELOADED = "reloaded"
    REJECTED = "rejected"  # the edit was broken; the previous value is still in force


class Reloader(Generic[T]):
    """Watches a config file; on change loads it and hands the new value to `apply`.

    `load(path)` parses and validates, raising with a message that names file, line and field
    (that message is what the user reads in the journal). `apply(value)` must be a cheap swap
    done from the loop that calls `check()`, so no lock is needed and nothing in flight is lost.

    Create it BEFORE the daemon's first load of the file: the watcher takes its baseline at
    construction, so an edit landing between the two is reloaded rather than missed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        load: Callable[[Path], T],
        apply: Callable[[T], None],
        *,
        what: str = "rules",
        describe: Callable[[T], str] | None = None,
        notifier: SystemdNotifier | None = None,
        watcher: FileWatcher | None = None,
        min_interval_s: float = 0.5,
    ) -> None:
        """`what` names the thing in log lines; `describe(value)` summarises it (default:
        "N triggers" when the value has a `triggers` list). With a `notifier`, systemd is told
        RELOADING=1 / READY=1 around each reload, so `systemctl reload` waits for it."""
        self.path = Path(path)
        self._load = load
        self._apply = apply
        self._what = what
        self._describe = describe or _default_describe
        self._notifier = notifier
        self.watcher = watcher or FileWatcher(self.path, min_interval_s)
        self.last_error: str | None = None

    def request(self) -> None:
        """Reload at the next `check()` even if the file looks unchanged (SIGHUP).
        Signal- and thread-safe: it only sets a flag."""
        self.watcher.request()

    def check(self, now_monotonic: float | None = None) -> ReloadResult:
        """Call from the daemon loop. Never raises for a bad file: that is the user's edit,
        not a crash."""
        if not self.watcher.poll(now_monotonic):
            return ReloadResult.UNCHANGED
        if self._notifier is not None:
            self._notifier.reloading()
        try:
            result = self._reload()
        finally:
            if self._notifier is not None:
                # READY=1 ends the 'reloading' state whether or not the edit was accepted.
                self._notifier.ready(self._status_line())
        return result

    def _reload(self) -> ReloadResult:
        try:
            value = self._load(self.path)
        except Exception as exc:  # any loader failure means "keep the old"
            self.last_error = _error_line(exc, self.path)
            log.error("%s - keeping the previous %s", self.last_error, self._what)
            return ReloadResult.REJECTED
        try:
            self._apply(value)
        except Exception as exc:
            self.last_error = _error_line(exc, self.path)
            log.error(
                "could not apply the new %s: %s - keeping the previous %s",
                self._what,
                self.last_error,
                self._what,
            )
            return ReloadResult.REJECTED
        self.last_error = None
        summary = self._describe(value)
        log.info("%s reloaded%s", self._what, f": {summary}" if summary else "")
        return ReloadResult.RELOADED

    def _status_line(self) -> str:
        if self.last_error is not None:
            return f"running; last edit of {self.path.name} rejected: {self.last_error}"
        return f"running; {self._what} loaded from {self.path}"


def _default_describe(value: object) -> str:
    triggers = getattr(value, "triggers", None)
    if triggers is not None and hasattr(triggers, "__len__"):
        n = len(triggers)
        return f"{n} trigger{'s' if n != 1 else ''}"
    return ""


def _error_line(exc: BaseException, path: Path) -> str:
    """One journal line from any exception: multi-line messages (pydantic) are joined, and the
    file name is added when the loader did not put it there itself."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    if not text:
        text = type(exc).__name__
    if path.name not in text:
        # Not a message written for the user about this file: say what kind of failure it is.
        if not isinstance(exc, (ValueError, OSError)) and text != type(exc).__name__:
            text = f"{type(exc).__name__}: {text}"
        text = f"{path.name}: {text}"
    return text
