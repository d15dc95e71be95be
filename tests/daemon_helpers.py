"""Helpers for end-to-end tests that start the real `claudio-daemon` as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SR = 22050


def daemon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "claudio_daemon", *args]


def write_rules(
    path: Path,
    *,
    port: int = 1883,
    model: Path | None = None,
    extra_triggers: str = "",
    away: str = "armed: false",
    lamp_claps: int = 2,
    tv_claps: int = 3,
    confirm: bool = False,
) -> Path:
    """A rules file for tests: lamp (Tasmota) on N claps, TV (Zigbee2MQTT) on M claps."""
    model_line = f"  path: {model}\n" if model is not None else ""
    path.write_text(
        f"""\
mqtt:
  host: 127.0.0.1
  port: {port}
  client_id: claudio-test
  topic_prefix: claudio
  reconnect_min_s: 0.2
  reconnect_max_s: 1
model:
{model_line}  threads: 1
audio:
  calibration: null
claps:
  confirm_with_classifier: {str(confirm).lower()}
appliances:
  lamp: {{preset: tasmota, topic: lamp}}
  tv: {{preset: zigbee2mqtt, topic: living_room_tv}}
triggers:
  - claps: {lamp_claps}
    actions: [lamp: toggle]
  - claps: {tv_claps}
    actions: [tv: toggle]
{extra_triggers}
away:
  {away}
"""
    )
    return path


def write_wav(path: Path, audio: np.ndarray) -> Path:
    sf.write(path, np.asarray(audio, np.float32), SR, subtype="FLOAT")
    return path


def json_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


class NotifySocket:
    """A real systemd-style notify socket: records every datagram the daemon sends."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.extend(data.decode().splitlines())

    def wait_for(self, line: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.messages:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} from the daemon; got {self.messages}")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Daemon:
    """`claudio-daemon run` as a real subprocess."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            daemon_cmd(*args),
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"daemon did not finish in {timeout}s; stderr:\n{err}") from None
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
