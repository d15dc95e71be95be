"""sd_notify against a real AF_UNIX datagram socket, in-process and from a real subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from claudio_daemon.service.notify import SystemdNotifier

ROOT = Path(__file__).resolve().parents[1]


class Listener:
    """Plays systemd's side: a bound datagram socket collecting notify messages."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def drain(self, wait_s: float = 0.0) -> list[str]:
        msgs: list[str] = []
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                self.sock.settimeout(remaining)
            else:
                self.sock.setblocking(False)
            try:
                msgs.append(self.sock.recv(4096).decode())
            except (BlockingIOError, TimeoutError):
                return msgs


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    if len(str(path)) >= 100:  # sun_path limit; use a short dir instead
        path = Path("/tmp") / f"claudio-notify-{uuid.uuid4().hex[:8]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield Listener(sock, str(path))
    sock.close()
    path.unlink(missing_ok=True)


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"claudio-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield Listener(sock, "@" + name)
    sock.close()


def test_ready_status_stopping_exact_datagrams(listener: Listener) -> None:
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert n.enabled
    assert n.ready("listening on hw:1")
    assert n.status("3 triggers, broker connected")
    assert n.stopping()
    assert listener.drain() == [
        "READY=1\nSTATUS=listening on hw:1",
        "STATUS=3 triggers, broker connected",
        "STOPPING=1",
    ]


def test_status_identical_repeats_are_not_resent(listener: Listener) -> None:
    n = SystemdNotifier(listener.env_value)
    for _ in range(50):
        n.status("armed")
    n.status("disarmed")
    n.status("disarmed")
    n.status("armed")
    assert listener.drain() == ["STATUS=armed", "STATUS=disarmed", "STATUS=armed"]


def test_status_newlines_cannot_inject_assignments(listener: Listener) -> None:
    n = SystemdNotifier(listener.env_value)
    n.status("bad\nWATCHDOG=trigger")
    assert listener.drain() == ["STATUS=bad WATCHDOG=trigger"]


def test_watchdog_rate_limited_to_half_the_interval(listener: Listener) -> None:
    now = [100.0]
    n = SystemdNotifier(listener.env_value, watchdog_usec=30_000_000, clock=lambda: now[0])
    assert n.watchdog_interval_s == 30.0
    sent_at = []
    # Called every 0.1 s of (fake) wall time for 40 s, as the audio loop would.
    for i in range(400):
        now[0] = 100.0 + i * 0.1
        if n.watchdog():
            sent_at.append(round(now[0] - 100.0, 1))
    assert sent_at == [0.0, 15.0, 30.0]
    assert listener.drain() == ["WATCHDOG=1"] * 3


def test_watchdog_disabled_without_usec_or_for_another_pid(listener: Listener) -> None:
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert n.watchdog_interval_s is None
    assert not n.watchdog()
    other = SystemdNotifier.from_env(
        {
            "NOTIFY_SOCKET": listener.env_value,
            "WATCHDOG_USEC": "1000000",
            "WATCHDOG_PID": str(os.getpid() + 1),
        }
    )
    assert not other.watchdog()
    mine = SystemdNotifier.from_env(
        {
            "NOTIFY_SOCKET": listener.env_value,
            "WATCHDOG_USEC": "1000000",
            "WATCHDOG_PID": str(os.getpid()),
        }
    )
    assert mine.watchdog()
    assert listener.drain() == ["WATCHDOG=1"]


def test_reloading_carries_monotonic_usec(listener: Listener) -> None:
    n = SystemdNotifier(listener.env_value)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.ready()
    first, second = listener.drain()
    key, _, value = first.partition("\n")
    assert key == "RELOADING=1"
    name, _, usec = value.partition("=")
    assert name == "MONOTONIC_USEC" and before <= int(usec) <= after
    assert second == "READY=1"


def test_abstract_namespace_socket(abstract_listener: Listener) -> None:
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": abstract_listener.env_value})
    n.ready("ok")
    n.stopping()
    assert abstract_listener.drain() == ["READY=1\nSTATUS=ok", "STOPPING=1"]


def test_noop_without_notify_socket() -> None:
    n = SystemdNotifier.from_env({})
    assert not n.enabled
    assert not n.ready("x") and not n.status("y") and not n.watchdog() and not n.stopping()


def test_send_errors_never_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = SystemdNotifier(str(tmp_path / "nobody-listens.sock"), watchdog_usec=1)
    caplog.set_level("DEBUG", logger="claudio_daemon.service.notify")
    assert not n.ready("x")
    assert not n.stopping()
    assert not n.watchdog()
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1  # logged once, then silent


_CHILD = """
import sys
from claudio_daemon.service.notify import SystemdNotifier
n = SystemdNotifier.from_env()
assert n.enabled
n.ready("child ready")
n.status("child ready")          # identical repeat: not sent
sent = sum(n.watchdog() for _ in range(1000))   # WATCHDOG_USEC=60 s: exactly one
n.status("child working")
n.stopping()
print(sent)
"""


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_real_subprocess_notifies(
    kind: str, listener: Listener, abstract_listener: Listener
) -> None:
    target = listener if kind == "path" else abstract_listener
    env = {
        **os.environ,
        "NOTIFY_SOCKET": target.env_value,
        "WATCHDOG_USEC": "60000000",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    assert target.drain(wait_s=0.2) == [
        "READY=1\nSTATUS=child ready",
        "WATCHDOG=1",
        "STATUS=child working",
        "STOPPING=1",
    ]


def test_subprocess_with_foreign_watchdog_pid_sends_no_keepalive(listener: Listener) -> None:
    env = {
        **os.environ,
        "NOTIFY_SOCKET": listener.env_value,
        "WATCHDOG_USEC": "60000000",
        "WATCHDOG_PID": "1",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"
    assert "WATCHDOG=1" not in listener.drain(wait_s=0.2)
