"""Live reload (file watch + SIGHUP) and signal handling, on real files and real signals.

The last test runs a miniature daemon in a subprocess wired the way the real one is (notifier,
signal handlers, reloader, logging) and drives it like systemd and a user would: edit the
file, break it, SIGHUP, SIGTERM.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from claudio_daemon.config_base import StrictModel
from claudio_daemon.service.notify import SystemdNotifier
from claudio_daemon.service.reload import FileWatcher, Reloader, ReloadResult
from claudio_daemon.service.signals import install_handlers
from tests.daemon_helpers import NotifySocket

ROOT = Path(__file__).resolve().parents[1]

GOOD_1 = "triggers:\n  - sound: clap2\n    action: lamp\n"
GOOD_2 = GOOD_1 + "  - sound: clap3\n    action: tv\n"
BROKEN = GOOD_1 + "  - sound: clap3\n    action: tv: on\n"  # line 5: mapping in a value


# --- a small stand-in for the rules loader: parses YAML, errors name file and line ----------


@dataclass(frozen=True)
class Rules:
    triggers: list[dict[str, str]]


def load_rules(path: Path) -> Rules:
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else "?"
        raise ValueError(f"{path.name}:{line}: {getattr(exc, 'problem', exc)}") from None
    triggers = (data or {}).get("triggers")
    if not isinstance(triggers, list):
        raise ValueError(f"{path.name}: triggers: expected a list")
    for i, t in enumerate(triggers):
        if "action" not in t:
            raise ValueError(f"{path.name}: triggers[{i}].action: missing")
    return Rules(triggers)


def write(path: Path, text: str, mtime_ns: int | None = None) -> None:
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


# --- FileWatcher ------------------------------------------------------------------------------


def test_watcher_reports_an_edit_once_after_it_settles(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    write(f, GOOD_1, 1_000_000_000)
    w = FileWatcher(f, min_interval_s=0.5)
    assert [w.poll(t) for t in (0.0, 0.5, 1.0)] == [False, False, False]
    write(f, GOOD_2, 2_000_000_000)
    assert w.poll(1.1) is False  # inside min_interval: not even looked at
    assert w.poll(1.5) is False  # seen changing: wait until it holds still
    assert w.poll(2.0) is True
    assert [w.poll(t) for t in (2.5, 3.0, 3.5)] == [False, False, False]


def test_watcher_waits_for_a_half_written_file(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    write(f, GOOD_1, 1_000_000_000)
    w = FileWatcher(f, min_interval_s=0.5)
    write(f, "triggers:\n  - sou", 2_000_000_000)  # editor mid-save
    assert w.poll(0.5) is False
    write(f, GOOD_2, 3_000_000_000)  # save completes before the next poll
    assert w.poll(1.0) is False  # signature moved again: not stable yet
    assert w.poll(1.5) is True


def test_watcher_ignores_touch_without_change(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    write(f, GOOD_1, 1_000_000_000)
    w = FileWatcher(f, min_interval_s=0.5)
    os.utime(f, ns=(5_000_000_000, 5_000_000_000))
    assert [w.poll(t) for t in (0.5, 1.0, 1.5, 2.0)] == [False] * 4
    write(f, GOOD_1, 6_000_000_000)  # rewritten with identical bytes
    assert [w.poll(t) for t in (2.5, 3.0, 3.5)] == [False] * 3


def test_watcher_follows_rename_over_and_temporary_absence(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    write(f, GOOD_1, 1_000_000_000)
    w = FileWatcher(f, min_interval_s=0.5)
    # vim/sed -i style: new inode renamed over the old name
    tmp = tmp_path / ".rules.yaml.swp"
    write(tmp, GOOD_2, 1_000_000_000)  # same mtime as before: inode and size tell
    os.replace(tmp, f)
    assert [w.poll(0.5), w.poll(1.0)] == [False, True]
    # gone for a while (editor delete-then-write): not a change, not an error
    f.unlink()
    assert [w.poll(t) for t in (1.5, 2.0, 2.5)] == [False] * 3
    write(f, GOOD_2, 2_000_000_000)  # back with the same content
    assert [w.poll(t) for t in (3.0, 3.5, 4.0)] == [False] * 3
    f.unlink()
    assert w.poll(4.5) is False
    write(f, GOOD_1, 3_000_000_000)  # back with different content
    assert [w.poll(5.0), w.poll(5.5)] == [False, True]


def test_watcher_file_created_after_start(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    w = FileWatcher(f, min_interval_s=0.5)
    assert w.poll(0.5) is False
    write(f, GOOD_1)
    assert [w.poll(1.0), w.poll(1.5)] == [False, True]


def test_watcher_request_forces_one_change(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    write(f, GOOD_1, 1_000_000_000)
    w = FileWatcher(f, min_interval_s=0.5)
    assert w.poll(0.0) is False
    w.request()
    assert w.poll(0.01) is True  # immediately, despite min_interval
    assert w.poll(0.6) is False


# --- Reloader ---------------------------------------------------------------------------------


class Holder:
    def __init__(self) -> None:
        self.value: Rules | None = None
        self.applied = 0

    def apply(self, rules: Rules) -> None:
        self.value = rules
        self.applied += 1


def test_reloader_applies_good_and_keeps_old_on_broken_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="claudio_daemon.service.reload")
    f = tmp_path / "rules.yaml"
    write(f, GOOD_1, 1_000_000_000)
    holder = Holder()
    holder.apply(load_rules(f))
    r = Reloader(f, load_rules, holder.apply, min_interval_s=0.5)
    assert r.check(0.0) is ReloadResult.UNCHANGED

    write(f, GOOD_2, 2_000_000_000)
    results = [r.check(t) for t in (0.5, 1.0)]
    assert results == [ReloadResult.UNCHANGED, ReloadResult.RELOADED]
    assert holder.value is not None and len(holder.value.triggers) == 2
    assert caplog.messages[-1] == "rules reloaded: 2 triggers"

    caplog.clear()
    write(f, BROKEN, 3_000_000_000)
    results = [r.check(t) for t in (1.5, 2.0)]
    assert results == [ReloadResult.UNCHANGED, ReloadResult.REJECTED]
    assert len(holder.value.triggers) == 2 and holder.applied == 2  # old rules still in force
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "\n" not in line
    assert line.startswith("rules.yaml:5: ")
    assert line.endswith(" - keeping the previous rules")
    assert r.last_error is not None and "rules.yaml:5" in r.last_error
    assert r.check(2.5) is ReloadResult.UNCHANGED  # a rejected edit is not retried in a loop

    write(f, GOOD_1, 4_000_000_000)
    assert [r.check(3.0), r.check(3.5)] == [ReloadResult.UNCHANGED, ReloadResult.RELOADED]
    assert len(holder.value.triggers) == 1 and r.last_error is None


def test_reloader_request_reloads_unchanged_file(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    write(f, GOOD_2)
    holder = Holder()
    r = Reloader(f, load_rules, holder.apply)
    r.request()  # what the SIGHUP handler does
    assert r.check() is ReloadResult.RELOADED
    assert holder.applied == 1


def test_reloader_joins_multiline_validation_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Trigger(StrictModel):
        sound: str
        action: str

    def load(path: Path) -> list[Trigger]:
        return [Trigger(**t) for t in yaml.safe_load(path.read_text())["triggers"]]

    f = tmp_path / "rules.yaml"
    write(f, "triggers:\n  - {sound: 1, colour: red}\n")
    r = Reloader(f, load, lambda _: None)
    r.request()
    caplog.set_level(logging.ERROR, logger="claudio_daemon.service.reload")
    assert r.check() is ReloadResult.REJECTED
    (record,) = caplog.records
    msg = record.getMessage()
    assert "\n" not in msg and msg.startswith("rules.yaml: ")
    for part in ("sound", "action", "colour", "keeping the previous rules"):
        assert part in msg
    with pytest.raises(ValidationError):  # sanity: the loader really raised pydantic's error
        load(f)


def test_reloader_apply_failure_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    write(f, GOOD_1)

    def apply(_: Rules) -> None:
        raise RuntimeError("appliance 'tv' has no topic")

    r = Reloader(f, load_rules, apply)
    r.request()
    assert r.check() is ReloadResult.REJECTED
    assert r.last_error == "rules.yaml: RuntimeError: appliance 'tv' has no topic"


def test_reloader_tells_systemd_about_reloads(tmp_path: Path) -> None:
    sock_path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    try:
        f = tmp_path / "rules.yaml"
        write(f, BROKEN)
        r = Reloader(f, load_rules, lambda _: None, notifier=SystemdNotifier(str(sock_path)))
        r.request()
        assert r.check() is ReloadResult.REJECTED
        first = sock.recv(4096).decode()
        second = sock.recv(4096).decode()
        assert first.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert second.startswith("READY=1\nSTATUS=running; last edit of rules.yaml rejected: ")
        assert "rules.yaml:5" in second
    finally:
        sock.close()


def test_reloader_with_the_real_rules_loader_and_example(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loader = pytest.importorskip("claudio_daemon.rules.loader")
    example = (ROOT / "rules.yaml").read_text()
    f = tmp_path / "rules.yaml"
    write(f, example, 1_000_000_000)
    holder: list[object] = []
    r = Reloader(f, loader.load_rules, holder.append, min_interval_s=0.5)
    n_triggers = len(loader.load_rules(f).triggers)
    caplog.set_level(logging.INFO, logger="claudio_daemon.service.reload")

    lines = example.splitlines()
    port_line = lines.index("  port: 1883") + 1
    write(f, example.replace("  port: 1883", "  port: 1883\n  colour: red"), 2_000_000_000)
    assert [r.check(0.5), r.check(1.0)] == [ReloadResult.UNCHANGED, ReloadResult.REJECTED]
    assert holder == []
    (record,) = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert record.getMessage().startswith(f"{f}:{port_line + 1}: mqtt.colour: unknown key 'colour'")
    assert record.getMessage().endswith(" - keeping the previous rules")

    write(f, example, 3_000_000_000)
    assert [r.check(1.5), r.check(2.0)] == [ReloadResult.UNCHANGED, ReloadResult.RELOADED]
    assert len(holder) == 1
    assert caplog.messages[-1] == f"rules reloaded: {n_triggers} triggers"


# --- signals (real signals to this process) ---------------------------------------------------


def test_signal_handlers_route_to_callbacks_and_restore() -> None:
    stop, reload = threading.Event(), threading.Event()
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    restore = install_handlers(stop.set, reload.set)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert reload.wait(2) and not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2)
        # already stopping: a second Ctrl-C gets you out
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        restore()
    assert {s: signal.getsignal(s) for s in before} == before


def test_install_handlers_refuses_other_threads() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            install_handlers(lambda: None, lambda: None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


# --- end to end: a miniature daemon in a real process -----------------------------------------

_MINI_DAEMON = """
import sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_service_reload import load_rules
from claudio_daemon.service.logs import setup_logging
from claudio_daemon.service.notify import SystemdNotifier
from claudio_daemon.service.reload import Reloader
from claudio_daemon.service.signals import install_handlers

setup_logging("info")
path = Path(sys.argv[1])
current = [load_rules(path)]
notifier = SystemdNotifier.from_env()
reloader = Reloader(path, load_rules, lambda r: current.__setitem__(0, r),
                    notifier=notifier, min_interval_s=0.1)
stop = threading.Event()
install_handlers(stop.set, reloader.request)
notifier.ready(f"{len(current[0].triggers)} triggers")
while not stop.wait(0.02):      # the audio loop: one block every 20 ms
    notifier.watchdog()
    reloader.check()
notifier.stopping()
"""


def test_mini_daemon_live_reload_sighup_and_stop(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    write(rules, GOOD_1)
    script = tmp_path / "mini_daemon.py"
    script.write_text(_MINI_DAEMON)
    # Read as systemd does, as the datagrams come: the kernel queues only
    # net.unix.max_dgram_qlen of them (10 here), so watchdog ticks left unread while the test
    # waits for log lines filled the queue and STOPPING=1 was dropped when the daemon won the
    # race against the first read after SIGTERM.
    notify = NotifySocket(tmp_path)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "1000000",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(rules), str(Path(__file__).parent)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line.rstrip("\n")) for line in proc.stderr], daemon=True
    )
    reader.start()

    def next_line(containing: str) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if containing in line:
                return line
        raise AssertionError(f"no log line with {containing!r} within 10 s")

    try:
        notify.wait_for("WATCHDOG=1", timeout=10)
        assert notify.messages[:2] == ["READY=1", "STATUS=1 triggers"]

        write(rules, GOOD_2)  # the user saves an edit
        assert next_line("rules reloaded").endswith("rules reloaded: 2 triggers")

        write(rules, BROKEN)  # a broken edit
        line = next_line("keeping the previous rules")
        assert " ERROR " in line and "rules.yaml:5:" in line

        write(rules, GOOD_1)
        next_line("rules reloaded: 1 trigger")
        proc.send_signal(signal.SIGHUP)  # systemctl reload
        next_line("rules reloaded: 1 trigger")

        proc.send_signal(signal.SIGTERM)  # systemctl stop
        notify.wait_for("STOPPING=1", timeout=10)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_reload_warns_only_for_what_needs_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    """model.classify_every_s is read on every block (live); block_size opens the device
    (restart), and the hint names the real unit."""
    from claudio_daemon.app import reload_applier
    from claudio_daemon.mqtt.publisher import MqttPublisher
    from claudio_daemon.pipeline import Pipeline
    from claudio_daemon.rules.loader import parse_rules
    from tests.test_pipeline import RULES as base

    rules = parse_rules(base)
    pipeline = Pipeline(rules, None)
    apply = reload_applier(pipeline, MqttPublisher(rules.mqtt), None, rules)
    caplog.set_level(logging.WARNING)
    apply(parse_rules(base + "model: {classify_every_s: 1.0}\n"))
    assert pipeline.rules.model.classify_every_s == 1.0
    assert not [r for r in caplog.records if "next restart" in r.getMessage()]
    apply(parse_rules(base.replace("calibration: null", "calibration: null, block_size: 2048")))
    (hint,) = [r.getMessage() for r in caplog.records if "next restart" in r.getMessage()]
    assert "audio:" in hint and "model:" not in hint
    assert "systemctl restart claudio-daemon)" in hint
    # Undone: what runs is what the file says again, no restart needed (it warned again).
    caplog.clear()
    caplog.set_level(logging.INFO, logger="claudio_daemon.app")
    apply(parse_rules(base))
    assert not [r for r in caplog.records if "next restart" in r.getMessage()]
    assert "audio: as running again: no restart needed" in caplog.text


def test_an_edit_the_service_cannot_read_is_said_once(tmp_path: Path) -> None:
    """An editor that renames a root-only 0600 file over rules.yaml: the service (not root)
    used to take the file for vanished, forever and without a word. The fix the error calls
    for, `chmod 644`, changes no time, size or inode, and was never noticed either."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the watcher as another user")
    folder = Path(tempfile.mkdtemp(prefix="claudio-unreadable-"))  # tmp_path is 0700
    try:
        folder.chmod(0o755)
        rules = folder / "rules.yaml"
        rules.write_text("appliances: {}\n")
        rules.chmod(0o644)
        script = (
            "import logging, sys\n"
            "from pathlib import Path\n"
            "from claudio_daemon.service.reload import Reloader\n"
            "from claudio_daemon.rules.loader import load_rules\n"
            "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
            "t = [0.0]\n"
            "r = Reloader(Path(sys.argv[1]), load=load_rules, apply=lambda v: None)\n"
            "r.watcher._clock = lambda: t[0]\n"
            "print('ready', flush=True)\n"
            "for _ in sys.stdin:\n"
            "    res = []\n"
            "    for _ in range(6):\n"
            "        t[0] += 1.0\n"
            "        res.append(r.check().value)\n"
            "    print(' '.join(res), flush=True)\n"
        )
        proc = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            + [sys.executable, "-c", script, str(rules)],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HOME": "/tmp"},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        new = folder / "rules.yaml.new"
        new.write_text("appliances: {}\n# edited as root\n")
        new.chmod(0o600)
        os.replace(new, rules)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        first = proc.stdout.readline().split()
        rules.chmod(0o644)
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert first.count("rejected") == 1 and set(first) == {"rejected", "unchanged"}, first
    assert out.split().count("reloaded") == 1, out
    (line,) = [x for x in err.splitlines() if x.startswith("ERROR")]
    assert "Permission denied" in line and "keeping the previous rules" in line
