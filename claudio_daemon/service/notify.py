"""sd_notify(3) without libsystemd: readiness, status, watchdog and stop/reload notices.

Why no dependency: the protocol is one datagram per notice on an AF_UNIX socket named by
$NOTIFY_SOCKET, and the python bindings would drag a C build onto a Raspberry Pi.

Every method is a cheap no-op when the daemon is not run by systemd (no $NOTIFY_SOCKET), and
none of them ever raises: a notify failure must never take the audio loop down. The socket is
non-blocking for the same reason - a stuck manager costs a dropped notice, not a stalled loop.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

__all__ = ["SystemdNotifier"]


def _monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd expects in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """Talks to the service manager over $NOTIFY_SOCKET.

    Thread-safe: the audio loop calls `watchdog()` every block while other threads may call
    `status()`. Create it with `from_env()`; the constructor is for tests and odd setups.
    """

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`address`: $NOTIFY_SOCKET as systemd sets it (a path, or '@name' for the abstract
        namespace); None disables everything. `watchdog_usec`: $WATCHDOG_USEC, None or 0 when
        the unit has no WatchdogSec=. `clock`: seconds, monotonic; injectable for tests.
        """
        self._address = _socket_address(address) if address else None
        self._watchdog_s = watchdog_usec / 1e6 if watchdog_usec and watchdog_usec > 0 else None
        self._clock = clock
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._last_watchdog: float | None = None
        self._last_status: str | None = None
        self._send_failed_logged = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        WATCHDOG_PID names the process the watchdog is meant for; when it is another process
        (we were forked or exec'd by the real service process) keep-alives are not ours to send.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec: int | None = None
        raw_usec = env.get("WATCHDOG_USEC", "").strip()
        if raw_usec:
            try:
                watchdog_usec = int(raw_usec)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw_usec)
        raw_pid = env.get("WATCHDOG_PID", "").strip()
        if watchdog_usec and raw_pid:
            try:
                if int(raw_pid) != os.getpid():
                    watchdog_usec = None
            except ValueError:
                log.warning("ignoring WATCHDOG_PID=%r: not an integer", raw_pid)
                watchdog_usec = None
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when a service manager listens (we were started with Type=notify)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """WatchdogSec= in seconds, or None when the unit has no watchdog."""
        return self._watchdog_s if self.enabled else None

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: systemd moves the unit to 'active'."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        sent = self._send("\n".join(lines))
        if sent and status is not None:
            self._last_status = _one_line(status)
        return sent

    def status(self, text: str) -> bool:
        """Free-form line shown by `systemctl status`; an identical repeat is not re-sent,
        so callers may report every block without flooding the manager."""
        line = _one_line(text)
        if line == self._last_status:
            return False
        sent = self._send(f"STATUS={line}")
        if sent:
            self._last_status = line
        return sent

    def watchdog(self) -> bool:
        """Keep-alive, meant to be called from the audio loop on every block.

        Sends WATCHDOG=1 at most once per half WatchdogSec= (systemd's own advice). The
        monotonic wall clock is right here, unlike elsewhere in Claudio where time is counted
        in samples: systemd's watchdog timer runs on wall time, and a stalled audio device
        that produces no samples is exactly what it must catch.
        """
        if self._watchdog_s is None or self._address is None:
            return False
        now = self._clock()
        with self._lock:
            last = self._last_watchdog
            if last is not None and now - last < self._watchdog_s / 2:
                return False
            self._last_watchdog = now
        return self._send("WATCHDOG=1")

    def reloading(self) -> bool:
        """A configuration reload has started; follow with `ready()` when it is over.

        MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the notice to the
        reload request; older managers ignore the extra field.
        """
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}")

    def stopping(self) -> bool:
        """Shutdown has begun: `systemctl status` shows 'deactivating' instead of a hang."""
        return self._send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start/stop time (slow model load on a Pi) without raising
        TimeoutStartSec= for everyone."""
        return self._send(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1e6))}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        data = message.encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._sock.setblocking(False)
                self._sock.sendto(data, self._address)
                return True
            except OSError as exc:
                if not self._send_failed_logged:
                    self._send_failed_logged = True
                    name = errno.errorcode.get(exc.errno or 0, "?")
                    log.debug(
                        "sd_notify to %r failed (%s: %s); further failures are silent",
                        self._address,
                        name,
                        exc.strerror or exc,
                    )
                return False


def _socket_address(value: str) -> str | bytes:
    """'@name' is Linux's abstract namespace: the kernel address starts with a NUL byte."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment inside the datagram.
    return " ".join(text.splitlines()).strip()
