"""The real daemon, end to end: real recordings in, a real Mosquitto, real subscribers.

Scenes are built at test time from ESC-50 clips in ../shared/data (single claps cut from
`clapping` recordings, knocks from `door_wood_knock`, over real rain); nothing is mocked.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import soundfile as sf

from tests.daemon_helpers import (
    ROOT,
    SR,
    Daemon,
    NotifySocket,
    daemon_cmd,
    json_events,
    write_rules,
    write_wav,
)
from tests.fixtures.broker import Broker, Subscriber, running_broker

T = TypeVar("T")

scenes = pytest.importorskip("bench.scenes")

LAMP = "cmnd/lamp/POWER"
TV = "zigbee2mqtt/living_room_tv/set"


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    root = shared_data / "esc50-fold4-dev"
    rng = np.random.default_rng(11)
    cut = scenes.cut_single_claps([shared_data / "esc50-16k-folds123", root])
    claps = [c for c in cut if scenes.clap_shaped(c)]
    knocks = scenes.cut_events(root, "door_wood_knock", length_s=0.25)
    bg = dict(scenes.load_backgrounds(root, ["rain"], per_category=1))["rain"]
    assert len(claps) >= 3 and len(knocks) >= 3
    out = tmp_path_factory.mktemp("scenes")
    two = scenes.make_pattern_scene(claps, 2, [0.45], ("rain", bg), 25.0, rng, tail_s=2.0)
    three = scenes.make_pattern_scene(claps, 3, [0.4, 0.5], ("rain", bg), 25.0, rng, tail_s=2.0)
    knock = scenes.make_pattern_scene(
        knocks, 3, [0.25, 0.3], ("rain", bg), 25.0, rng, kind="knock_pattern"
    )
    silence = np.zeros(SR * 4, np.float32)
    return {
        "two_three": write_wav(out / "two_three.wav", np.concatenate([two.audio, three.audio])),
        "knocks": write_wav(out / "knocks.wav", knock.audio),
        "two_then_quiet": write_wav(
            out / "two_then_quiet.wav", np.concatenate([two.audio, silence, silence])
        ),
        "silence_then_two": write_wav(
            out / "silence_then_two.wav", np.concatenate([silence, two.audio])
        ),
    }


def daemon(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    """claudio-daemon ARGS in the repository, output captured as text."""
    return subprocess.run(
        daemon_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs
    )


def replay(file: Path, rules: Path, *extra: str) -> list[dict]:
    proc = subprocess.run(
        daemon_cmd("replay", str(file), "--rules", str(rules), "--json", *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json_events(proc.stdout)


def test_replay_json_two_then_three_claps(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", model=tiny_onnx_model)
    events = replay(scene_files["two_three"], rules)
    claps = [e for e in events if e["type"] == "claps"]
    actions = [e for e in events if e["type"] == "action"]
    assert [c["count"] for c in claps] == [2, 3]
    assert [(a["appliance"], a["command"], a["topic"], a["payload"]) for a in actions] == [
        ("lamp", "toggle", LAMP, "TOGGLE"),
        ("tv", "toggle", TV, '{"state": "TOGGLE"}'),
    ]
    # Every line has a type and a time within the file; actions come when patterns end.
    duration = 1 + 0.45 + 2 + 1 + 0.9 + 2
    assert all({"type", "time"} <= e.keys() for e in events)
    assert all(0 <= e["time"] <= duration + 0.5 for e in events)
    assert actions[0]["time"] == claps[0]["time"] and actions[1]["time"] == claps[1]["time"]
    assert claps[0]["claps"][0] == pytest.approx(1.0 + 0.02, abs=0.03)


def test_replay_in_a_terminal_tells_what_happened(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """Without --json a replay printed nothing at all (its events went to the log, which a
    replay keeps at warnings): a person trying out rules saw no result."""
    rules = write_rules(tmp_path / "rules.yaml", model=tiny_onnx_model)
    proc = subprocess.run(
        daemon_cmd("replay", str(scene_files["two_three"]), "--rules", str(rules)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split(" at ")[0] for ln in lines if "claps" in ln] == [
        "2 claps",
        "lamp toggle (claps:2)",
        "3 claps",
        "tv toggle (claps:3)",
    ]
    seconds = sf.info(str(scene_files["two_three"])).duration
    assert lines[-1] == (
        f"two_three.wav: {seconds:.1f} s of audio, 2 clap patterns, 0 sound events, 2 actions"
    )


def test_replay_at_a_time_of_day_meets_when_windows_on_the_audio_clock(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """`replay --at` tries night-only rules by day, and the recording's own time moves on
    as its samples do (a fast replay would not move the wall clock past 22:00)."""
    rules = write_rules(tmp_path / "rules.yaml", model=tiny_onnx_model)
    night = '    when: ["22:00-07:00"]\n'
    text = rules.read_text()
    for action in ("    actions: [lamp: toggle]\n", "    actions: [tv: toggle]\n"):
        text = text.replace(action, action + night)
    rules.write_text(text)

    def switched(at: str) -> list[str]:
        events = replay(scene_files["two_three"], rules, "--at", at)
        assert [e["count"] for e in events if e["type"] == "claps"] == [2, 3]
        return [e["appliance"] for e in events if e["type"] == "action"]

    assert switched("12:00") == []
    assert switched("23:30") == ["lamp", "tv"]
    # The two claps end about 2.5 s in, the three about 6.5 s in.
    assert switched("21:59:56") == ["tv"]
    bad = subprocess.run(
        daemon_cmd("replay", str(scene_files["two_three"]), "--rules", str(rules), "--at", "9pm"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--at '9pm'" in bad.stderr


def test_replay_knocks_give_no_action(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", model=tiny_onnx_model)
    events = replay(scene_files["knocks"], rules)
    assert [e for e in events if e["type"] == "action"] == []


def test_check_command(tiny_onnx_model: Path, tmp_path: Path) -> None:
    good = write_rules(tmp_path / "good.yaml", model=tiny_onnx_model)
    ok = subprocess.run(daemon_cmd("check", str(good)), cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and "6 labels" in ok.stdout

    bad_label = write_rules(
        tmp_path / "label.yaml",
        model=tiny_onnx_model,
        extra_triggers="  - sound: glass_braking\n    actions: [lamp: 'on']\n",
    )
    res = subprocess.run(
        daemon_cmd("check", str(bad_label)), cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 1
    line = bad_label.read_text().splitlines().index("  - sound: glass_braking") + 1
    assert f"label.yaml:{line}: triggers[2].sound" in res.stderr
    assert "did you mean 'glass_breaking'" in res.stderr

    typo = tmp_path / "typo.yaml"
    typo.write_text(good.read_text().replace("  port:", "  prot:"))
    res = subprocess.run(daemon_cmd("check", str(typo)), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1
    assert "typo.yaml:3: mqtt.prot" in res.stderr


def test_repository_rules_check_against_tiny_model(tiny_onnx_model: Path) -> None:
    res = subprocess.run(
        daemon_cmd("check", "rules.yaml", "--model", str(tiny_onnx_model)),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_service_commands_over_mqtt_with_notify(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    """`run` on a recording: exact MQTT commands, availability, READY/WATCHDOG/STOPPING."""
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)
    notify = NotifySocket(tmp_path)
    with Subscriber(mosquitto.host, mosquitto.port, ["#"]) as sub:
        daemon = Daemon(
            ["run", "--rules", str(rules), "--input", str(scene_files["two_three"])],
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"},
        )
        try:
            notify.wait_for("READY=1")
            code, _, err = daemon.wait(timeout=90)
        finally:
            daemon.kill()
            notify.close()
        assert code == 0, err
        sub.wait_for(lambda m: any(t == "claudio/available" and p == b"offline" for t, p, _ in m))
        assert sub.payloads(LAMP) == [b"TOGGLE"]
        assert sub.payloads(TV) == [b'{"state": "TOGGLE"}']
        assert all(not retain for topic, _, retain in sub.messages if topic in (LAMP, TV))
        assert sub.payloads("claudio/available") == [b"online", b"offline"]
        events = [json.loads(p) for p in sub.payloads("claudio/event")]
        assert [e["count"] for e in events if e["type"] == "claps"] == [2, 3]
        assert sub.payloads("claudio/away/state") == [b"OFF"]
    assert "WATCHDOG=1" in notify.messages
    assert notify.messages.index("READY=1") < notify.messages.index("STOPPING=1")


def test_sigterm_flushes_and_goes_offline(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)
    notify = NotifySocket(tmp_path)
    with Subscriber(mosquitto.host, mosquitto.port, ["#"]) as sub:
        daemon = Daemon(
            ["run", "--rules", str(rules), "--input", str(scene_files["two_then_quiet"])],
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        try:
            notify.wait_for("READY=1")
            sub.wait_for(lambda m: any(t == LAMP for t, _, _ in m), timeout=30)
            started = time.monotonic()
            daemon.terminate()
            code, _, err = daemon.wait(timeout=20)
        finally:
            daemon.kill()
            notify.close()
        assert code == 0, err
        assert time.monotonic() - started < 10
        sub.wait_for(lambda m: ("claudio/available", b"offline", False) in m, timeout=5)
    assert "STOPPING=1" in notify.messages
    # A subscriber arriving later sees the retained "offline".
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/available"]) as late:
        late.wait_for(lambda m: ("claudio/available", b"offline", True) in m, timeout=5)


def test_broker_restart_mid_run_loses_no_command(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    """The broker is down when the claps come; the command arrives once it is back."""
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)
    notify = NotifySocket(tmp_path)
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP], client_id="lamp-sub") as sub:
        daemon = Daemon(
            ["run", "--rules", str(rules), "--input", str(scene_files["silence_then_two"])],
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        try:
            notify.wait_for("READY=1")
            time.sleep(0.5)
            mosquitto.stop()
            time.sleep(6.5)  # the two claps (about 5 s into the file) happen meanwhile
            mosquitto.start()
            sub.wait_for(lambda m: len(m) >= 1, timeout=20)
            code, _, err = daemon.wait(timeout=60)
        finally:
            daemon.kill()
            notify.close()
        assert code == 0, err
        assert sub.payloads(LAMP) == [b"TOGGLE"]


def test_away_mode_armed_over_mqtt_alerts(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    rules = write_rules(
        tmp_path / "rules.yaml",
        port=mosquitto.port,
        model=tiny_onnx_model,
        away="armed: false\n  arm_delay_s: 0\n  actions: [tv]\n  margin_db: 15\n  cooldown_s: 30",
    )
    notify = NotifySocket(tmp_path)
    with Subscriber(mosquitto.host, mosquitto.port, ["#"]) as sub:
        daemon = Daemon(
            ["run", "--rules", str(rules), "--input", str(scene_files["silence_then_two"])],
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        try:
            notify.wait_for("READY=1")
            sub.client.publish("claudio/away/set", "ON", qos=1)
            code, _, err = daemon.wait(timeout=60)
        finally:
            daemon.kill()
            notify.close()
        assert code == 0, err
        sub.wait_for(lambda m: any(t == "claudio/alert" for t, _, _ in m), timeout=5)
        assert b"ON" in sub.payloads("claudio/away/state")
        assert b'{"state": "ON"}' in sub.payloads(TV)
        alert = json.loads(sub.payloads("claudio/alert")[0])
        assert alert["level_db"] > -60


def while_daemon_runs(
    args: list[str], then: Callable[[], T], here: Path, env: dict[str, str] | None = None
) -> tuple[T, str]:
    """Start the daemon as the service would (`here` holds its notify socket), do `then`
    once it is ready, stop it with SIGTERM: `then`'s result and the daemon's log."""
    notify = NotifySocket(here)
    daemon = Daemon(args, env={"NOTIFY_SOCKET": str(notify.path), **(env or {})})
    try:
        notify.wait_for("READY=1")
        result = then()
        daemon.terminate()
        code, _, err = daemon.wait(timeout=60)
    finally:
        daemon.kill()
        notify.close()
    assert code == 0, err
    return result, err


def test_away_from_a_shell_is_confirmed_and_kept_over_a_restart(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    """`away on` exited 0 ("sent") with no daemon listening: someone leaving the house
    believed it armed. Now it waits for the daemon's new state, and says when none came."""
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)

    def away(state: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            daemon_cmd("away", state, "--rules", str(rules)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    state = tmp_path / "state"  # the service's StateDirectory
    state.mkdir()

    def while_running(then: Callable[[], T]) -> tuple[T, str]:
        """Start the service, do `then` once it is ready, stop it: `then`'s result and
        the daemon's log."""
        here = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        here.mkdir()
        args = ["run", "--rules", str(rules), "--input", str(scene_files["silence_then_two"])]
        return while_daemon_runs(args, then, here, env={"STATE_DIRECTORY": str(state)})

    armed, err = while_running(lambda: away("on"))
    assert armed.returncode == 0, armed.stderr
    assert armed.stdout.strip() == "AWAY on: confirmed by the daemon (sent to claudio/away/set)"
    assert "AWAY armed (mqtt)" in err
    gone = away("off")  # the daemon has stopped and said so
    assert gone.returncode == 2
    assert "no daemon confirmed it within 5 s (it last said 'offline' on claudio/available)" in (
        gone.stderr
    )
    # A restart (a reboot, systemd after a crash) keeps the house armed although
    # rules.yaml says `armed: false`: that is the state at first start, not after a command.
    with Subscriber(mosquitto.host, mosquitto.port, ["claudio/away/state"]) as sub:
        # The daemon's own word, not the retained copy of the first run's.
        _, err = while_running(
            lambda: sub.wait_for(lambda m: any(not r for _, _, r in m), timeout=10)
        )
    assert [p for _, p, retained in sub.messages if not retained][0] == b"ON"
    assert "AWAY armed (restored: set by mqtt at " in err


def test_away_from_a_shell_that_the_broker_acl_keeps_deaf_says_so(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """A broker whose ACL lets a client send the command but not read the daemon's state
    (Mosquitto grants the subscription and delivers nothing) left `away on` saying "is
    claudio-daemon running?" while the daemon was online and had armed the house."""
    acl = tmp_path / "acl"
    acl.write_text(
        "topic write #\n"  # the daemon publishes events, state and device commands
        "topic readwrite claudio/away/set\n"
        "topic readwrite claudio/available\n"  # claudio/away/state: write only
    )
    with running_broker(tmp_path / "mosquitto", f"acl_file {acl}") as broker:
        rules = write_rules(tmp_path / "rules.yaml", port=broker.port, model=tiny_onnx_model)
        sent, err = while_daemon_runs(
            ["run", "--rules", str(rules), "--input", str(scene_files["silence_then_two"])],
            lambda: subprocess.run(
                daemon_cmd("away", "on", "--rules", str(rules)),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            ),
            tmp_path,
        )
    assert "AWAY armed (mqtt)" in err  # the command arrived; only its answer was not heard
    assert sent.returncode == 2, sent.stdout
    assert "although the daemon is online (it says so on claudio/available)" in sent.stderr
    assert (
        "the broker may not let anonymous clients publish to claudio/away/set or read "
        "claudio/away/state; check its ACL"
    ) in sent.stderr


def _run_quietly_as_the_service(rules: Path, state: Path) -> str:
    """Half a second of silence through `run`, with the service's state folder; stderr."""
    wav = write_wav(state.parent / "quiet.wav", np.zeros(SR // 2, np.float32))
    proc = daemon(
        "run",
        "--rules",
        str(rules),
        "--input",
        str(wav),
        env=os.environ | {"STATE_DIRECTORY": str(state)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def _retained_configs(broker: Broker) -> set[str]:
    """The Home Assistant discovery configs the broker keeps now."""
    with Subscriber(broker.host, broker.port, ["homeassistant/#"]) as ha:
        time.sleep(0.5)
        return {t for t, p, retained in ha.messages if p and retained}


def test_a_new_node_id_withdraws_the_old_home_assistant_device(
    tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    """Changing mqtt.client_id (the discovery node id) left the old device's retained
    configs on the broker: Home Assistant showed a second, dead Claudio for good. The
    service remembers what it announced and withdraws what it no longer does."""
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)
    state = tmp_path / "state"
    state.mkdir()

    _run_quietly_as_the_service(rules, state)
    first = _retained_configs(mosquitto)
    assert first and all("/claudio-test/" in t for t in first)
    rules.write_text(rules.read_text().replace("client_id: claudio-test", "client_id: kitchen"))
    _run_quietly_as_the_service(rules, state)
    second = _retained_configs(mosquitto)
    assert second and all("/kitchen/" in t for t in second), second
    # A damaged record cannot make the service clear anyone else's retained topics.
    record = state / "discovery.json"
    record.write_text(json.dumps([*json.loads(record.read_text()), "tele/lamp/STATE"]))
    with Subscriber(mosquitto.host, mosquitto.port, ["tele/lamp/#"]) as other:
        other.client.publish("tele/lamp/STATE", "ON", qos=1, retain=True).wait_for_publish(5)
    _run_quietly_as_the_service(rules, state)
    with Subscriber(mosquitto.host, mosquitto.port, ["tele/lamp/STATE"]) as sub:
        assert sub.wait_for(lambda m: m, 5)[0][1] == b"ON"


def test_a_withdrawal_the_broker_refuses_is_tried_again_at_the_next_start(
    tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """An MQTT 5 broker whose ACL refused clearing the old node's configs: the record
    forgot them after the run, so fixing the ACL never removed the ghost device."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")
    with running_broker(tmp_path / "mosquitto", f"acl_file {acl}") as broker:
        rules = write_rules(tmp_path / "rules.yaml", port=broker.port, model=tiny_onnx_model)
        rules.write_text(rules.read_text().replace("  client_id:", "  protocol: '5'\n  client_id:"))
        state = tmp_path / "state"
        state.mkdir()
        record = state / "discovery.json"

        _run_quietly_as_the_service(rules, state)
        old = _retained_configs(broker)
        assert old and all("/claudio-test/" in t for t in old)
        rules.write_text(rules.read_text().replace("client_id: claudio-test", "client_id: kitchen"))
        # Everyone may read everything; the daemon may write its own topics and the new
        # node's configs, not the old node's.
        acl.write_text(
            "topic read #\ntopic write claudio/#\ntopic write homeassistant/+/kitchen/#\n"
        )
        broker.restart()  # persistence keeps the retained configs
        err = _run_quietly_as_the_service(rules, state)
        assert "broker refused to clear homeassistant/" in err and "(Not authorized)" in err
        assert "Home Assistant keeps that entity; check the broker's ACL" in err
        assert old <= _retained_configs(broker)  # still there: the ghost device
        assert old <= set(json.loads(record.read_text()))  # ...and still on record

        acl.write_text("topic readwrite #\n")  # the user fixes the ACL
        broker.restart()
        err = _run_quietly_as_the_service(rules, state)
        assert "refused" not in err
        now = _retained_configs(broker)
        assert now and not now & old and all("/kitchen/" in t for t in now)
        assert set(json.loads(record.read_text())) == now


def test_rules_reload_while_running(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    """A broken edit is rejected and logged; a good edit is live within a second or two."""
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)
    notify = NotifySocket(tmp_path)
    with Subscriber(mosquitto.host, mosquitto.port, [LAMP, TV]) as sub:
        daemon = Daemon(
            ["run", "--rules", str(rules), "--input", str(scene_files["silence_then_two"])],
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        try:
            notify.wait_for("READY=1")
            rules.write_text(rules.read_text().replace("claps: 3", "claps: zero"))
            time.sleep(1.2)
            # Now swap: two claps switch the TV, four the lamp; and a broker setting that
            # only a restart can apply.
            write_rules(rules, port=mosquitto.port, model=tiny_onnx_model, lamp_claps=4, tv_claps=2)
            rules.write_text(rules.read_text().replace("reconnect_max_s: 1", "reconnect_max_s: 2"))
            code, _, err = daemon.wait(timeout=60)
        finally:
            daemon.kill()
            notify.close()
        assert code == 0, err
        assert "rules.yaml:" in err and "triggers[1].claps" in err and "keeping the previous" in err
        assert "rules reloaded" in err
        assert "changes to mqtt: take effect at the next restart" in err
        sub.wait_for(lambda m: len(m) >= 1, timeout=5)
        assert sub.payloads(TV) == [b'{"state": "TOGGLE"}']
        assert sub.payloads(LAMP) == []
    # Home Assistant was told about the new pattern: its retained discovery lists four
    # claps (the event entity rejects event types it was not told about).
    node = "claudio-test"
    with Subscriber(mosquitto.host, mosquitto.port, ["homeassistant/#"]) as ha:
        wanted = (
            f"homeassistant/event/{node}/claps/config",
            f"homeassistant/device_automation/{node}/claps_4/config",
        )
        ha.wait_for(lambda m: set(wanted) <= {t for t, _, _ in m}, timeout=5)
        time.sleep(0.3)  # the rest of the retained configs (claps_3's would come now)
        configs = {t: json.loads(p) for t, p, _ in ha.messages if p}
    assert "claps_4" in configs[f"homeassistant/event/{node}/claps/config"]["event_types"]
    assert f"homeassistant/device_automation/{node}/claps_4/config" in configs
    # ...and that three claps do nothing now (removed: no retained config left).
    assert f"homeassistant/device_automation/{node}/claps_3/config" not in configs


def test_the_bundled_demo_does_what_the_quick_start_promises() -> None:
    """demo/claps-demo.flac with the example rules.yaml and the shipped model: the lamp after
    two claps, nothing for the knock, the TV after three (README, quick start)."""
    from claudio_daemon.app import shipped_model

    if shipped_model() is None:
        pytest.skip("no shipped model in models/")
    events = replay(ROOT / "demo" / "claps-demo.flac", ROOT / "rules.yaml")
    claps = [e for e in events if e["type"] == "claps"]
    actions = [(e["appliance"], e["topic"]) for e in events if e["type"] == "action"]
    assert [c["count"] for c in claps] == [2, 3]
    assert actions == [("lamp", LAMP), ("tv", TV)]


def test_missing_mqtt_password_is_one_clear_line(tiny_onnx_model: Path, tmp_path: Path) -> None:
    """install-service.sh creates the credential file empty: starting before filling it in
    says so in one line, with no traceback (whose locals would show the file's bytes)."""
    rules = write_rules(tmp_path / "rules.yaml", port=1, model=tiny_onnx_model)
    rules.write_text(
        rules.read_text().replace(
            "  client_id: claudio-test\n",
            "  client_id: claudio-test\n  username: claudio\n"
            "  password_file: ${CREDENTIALS_DIRECTORY}/mqtt-password\n",
        )
    )
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("")
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(SR, np.float32))
    for command in (["run", "--input", str(wav)], ["replay", str(wav), "--publish"]):
        proc = subprocess.run(
            daemon_cmd(*command, "--rules", str(rules)),
            cwd=ROOT,
            env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds), "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0, command
        assert "mqtt-password is empty" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_replay_publish_without_a_broker_does_not_exit_0(
    scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """`replay --publish` whose toggles never reached a broker exited 0 like a success."""
    from tests.fixtures.broker import _free_port

    rules = write_rules(tmp_path / "rules.yaml", port=_free_port(), model=tiny_onnx_model)
    proc = subprocess.run(
        daemon_cmd("replay", str(scene_files["two_three"]), "--rules", str(rules), "--publish"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "lamp toggle (claps:2)" in proc.stdout  # what it would have done is still shown
    assert "2 undelivered command(s) lost" in proc.stderr
    assert "error: --publish: messages left undelivered to the broker at 127.0.0.1:" in (
        proc.stderr
    )


def test_replay_reads_in_the_live_block_size(shared_data: Path, tmp_path: Path) -> None:
    """The pipeline classifies once a block, so a replay in 1024-sample blocks of a daemon
    set to 4096 heard other windows than the live run it stands for."""
    from claudio_daemon import app
    from claudio_daemon.audio.source import FileSource
    from claudio_daemon.runner import Runner

    folder = shared_data / "esc50-16k-folds123" / "audio"
    picks = [sorted(folder.glob(f"*-{c}.flac"))[0] for c in (0, 30, 22, 40)]
    audio = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in picks])
    wav = tmp_path / "mix.wav"
    sf.write(str(wav), audio, 16000)
    text = (ROOT / "rules.yaml").read_text()
    assert "block_size: 1024" in text
    rules = tmp_path / "rules.yaml"
    rules.write_text(text.replace("block_size: 1024", "block_size: 4096"))

    replayed = io.StringIO()
    app.run_replay(wav, rules_path=rules, model_path=None, json_out=replayed)
    parts = app.assemble(rules, None)
    live = io.StringIO()  # what the microphone hands the pipeline: blocks of block_size
    Runner(parts.pipeline, json_out=live).run(
        FileSource(wav, parts.pipeline.sample_rate, block_size=4096)
    )
    events = json_events(replayed.getvalue())
    assert any(e["type"] == "sound" for e in events)
    assert events == json_events(live.getvalue())


def test_status_keeps_showing_a_rejected_edit(tiny_onnx_model: Path, tmp_path: Path) -> None:
    """`systemctl status` shows the last rejection until a good edit: the status line sent
    every 10 s of audio used to replace it."""
    rules = write_rules(tmp_path / "rules.yaml", port=1, model=tiny_onnx_model)
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(int(SR * 11.5), np.float32))
    notify = NotifySocket(tmp_path)
    daemon = Daemon(
        ["run", "--rules", str(rules), "--input", str(wav)],
        env={"NOTIFY_SOCKET": str(notify.path)},
    )
    try:
        notify.wait_for("READY=1")
        rules.write_text(rules.read_text().replace("claps: 3", "claps: zero"))
        code, _, err = daemon.wait(timeout=60)
    finally:
        daemon.kill()
        notify.close()
    assert code == 0, err
    status = [m for m in notify.messages if m.startswith("STATUS=")]
    periodic = [m for m in status if m.startswith("STATUS=level ")]
    assert any("rejected" in m for m in status) and len(periodic) >= 2, status
    assert "last edit of rules.yaml rejected: " in periodic[-1], periodic[-1]
    assert "triggers[1].claps" in periodic[-1]


def test_rules_in_a_folder_the_user_may_not_enter_is_one_line(tmp_path: Path) -> None:
    """/etc/claudio is 0750 root:claudio: `claudio-daemon away on` by someone outside the
    group was a PermissionError traceback."""
    import shutil
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    etc = Path(tempfile.mkdtemp(prefix="claudio-etc-"))
    try:
        etc.chmod(0o700)
        shutil.copy(ROOT / "rules.yaml", etc / "rules.yaml")
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            + daemon_cmd("away", "on", "--rules", str(etc / "rules.yaml")),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": "/tmp"},
        )
    finally:
        shutil.rmtree(etc, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {etc / 'rules.yaml'}: permission denied (run with sudo, join the claudio "
        "group, or pass --rules FILE)"
    ]


def test_away_from_a_shell_reads_the_services_credential(mosquitto_auth, tmp_path: Path) -> None:
    """The README's password setup names ${CREDENTIALS_DIRECTORY}, which only systemd sets:
    `sudo claudio-daemon away on` reads the install script's credentials folder instead,
    and without it says so (it claimed the broker could not be reached)."""
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto_auth.port)
    rules.write_text(
        rules.read_text().replace(
            "  client_id: claudio-test\n",
            f"  client_id: claudio-test\n  username: {mosquitto_auth.username}\n"
            "  password_file: ${CREDENTIALS_DIRECTORY}/mqtt-password\n",
        )
    )
    creds = tmp_path / "credentials"  # stands for /etc/claudio/credentials
    creds.mkdir()
    (creds / "mqtt-password").write_text(mosquitto_auth.password + "\n")
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    script = (
        "import sys\nfrom pathlib import Path\nfrom claudio_daemon import app, cli\n"
        "app.SERVICE_CREDENTIALS = Path(sys.argv[1])\n"
        "sys.argv = ['claudio-daemon', 'away', 'on', '--rules', sys.argv[2]]\ncli.main()\n"
    )

    def away(folder: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, str(folder), str(rules)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # Logged in with that password: the broker took the command (no daemon runs to
    # confirm it, which is said, not taken for success).
    sent = away(creds)
    assert sent.returncode == 2, sent.stderr
    assert "sent to claudio/away/set, but no daemon confirmed it" in sent.stderr
    missing = away(tmp_path / "no-such-folder")
    assert missing.returncode == 2
    assert "cannot read the MQTT password" in missing.stderr
    # Root is not told to use sudo (it already does); anyone else is.
    hint = "run it with sudo" if os.geteuid() else f"read from {tmp_path / 'no-such-folder'}"
    assert hint in missing.stderr, missing.stderr
    assert "could not reach" not in missing.stderr


def test_away_from_a_shell_with_password_env_says_where_the_variable_is(tmp_path: Path) -> None:
    """With `password_env` the variable lives in claudio.env, which only systemd reads:
    `sudo claudio-daemon away on` was told to "run it with sudo", which it did."""
    rules = write_rules(tmp_path / "rules.yaml")
    rules.write_text(
        rules.read_text().replace(
            "  client_id: claudio-test\n",
            "  client_id: claudio-test\n  username: u\n  password_env: CLAUDIO_MQTT_PASSWORD\n",
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "CLAUDIO_MQTT_PASSWORD"}
    proc = subprocess.run(
        daemon_cmd("away", "off", "--rules", str(rules)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "CLAUDIO_MQTT_PASSWORD" in proc.stderr
    assert (
        "from /etc/claudio/claudio.env, which a shell does not read: sudo sh -c 'set -a; "
        ". /etc/claudio/claudio.env; exec claudio-daemon away off'" in proc.stderr
    ), proc.stderr
    assert "run it with sudo" not in proc.stderr


def test_replay_of_a_file_broken_half_way_is_one_clear_error(tmp_path: Path) -> None:
    """A FLAC cut short (a copy that stopped half-way) opens fine and fails while decoding:
    `replay` crashed with a traceback there instead of naming the file."""
    noise = 0.1 * np.random.default_rng(0).standard_normal(SR * 5)
    whole = tmp_path / "whole.flac"
    sf.write(whole, noise.astype(np.float32), SR)
    data = whole.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    rules = write_rules(tmp_path / "rules.yaml")
    proc = daemon("replay", str(cut), "--rules", str(rules), "--no-classifier")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"{cut}: cannot decode audio" in proc.stderr


def test_replay_decides_the_claps_a_recording_ends_on(
    shared_data: Path, tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """A recording that stops 0.3 s after its last clap: live, the room would have gone on
    and the pattern been decided by its end silence; the replay ended first and said
    nothing ("0 clap patterns")."""
    rng = np.random.default_rng(5)
    cut = scenes.cut_single_claps([shared_data / "esc50-16k-folds123"])
    claps = [c for c in cut if scenes.clap_shaped(c)]
    two = scenes.make_pattern_scene(claps, 2, [0.4], None, 30.0, rng, tail_s=0.3)
    wav = write_wav(tmp_path / "ends.wav", two.audio)
    rules = write_rules(tmp_path / "rules.yaml", model=tiny_onnx_model)
    events = replay(wav, rules, "--no-classifier")
    assert [e["count"] for e in events if e["type"] == "claps"] == [2]
    assert [e["appliance"] for e in events if e["type"] == "action"] == ["lamp"]
    proc = daemon("replay", str(wav), "--rules", str(rules), "--no-classifier")
    # The silence that decided it is not audio the file had.
    seconds = len(two.audio) / SR
    assert proc.stdout.splitlines()[-1] == (
        f"ends.wav: {seconds:.1f} s of audio, 1 clap pattern, 0 sound events, 1 action"
    )


def test_replay_hears_a_sound_at_the_very_end_of_a_recording(
    shared_data: Path, tmp_path: Path
) -> None:
    """Glass breaking in the last 0.3 s of a recording was never classified (the file ended
    before the next classification point); with a second of quiet room after it, it was."""
    from claudio_daemon import app
    from claudio_daemon.audio.io import read_audio
    from claudio_daemon.audio.resample import StreamingResampler

    path = shared_data / "esc50-fold4-dev" / "audio" / "4-204115-A-39.wav"  # glass_breaking
    glass, rate = read_audio(path)
    rs = StreamingResampler(rate, SR)
    glass = np.concatenate([rs.process(glass), rs.flush()])
    room = 0.001 * np.random.default_rng(0).standard_normal(int(1.1 * SR))
    rules = tmp_path / "rules.yaml"
    rules.write_text("audio: {calibration: null}\n")
    audio = np.concatenate([room, glass[: int(0.3 * SR)]])
    runner = app.run_replay(
        write_wav(tmp_path / "ends.wav", audio), rules_path=rules, model_path=None, json_out=None
    )
    assert runner.pipeline.stats.classifications >= 1
    assert runner.pipeline.stats.sounds >= 1


def test_replay_publish_beside_the_running_service_leaves_it_alone(
    mosquitto, scene_files: dict[str, Path], tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """Trying rules out with `replay --publish` while the service runs: the replay took the
    service's client id (the broker disconnected the service, again and again), left
    "offline" retained on its availability topic, re-published AWAY state and discovery
    from its own rules file. Now it only sends what it heard and did."""
    from claudio_daemon import app
    from claudio_daemon.mqtt.publisher import MqttPublisher
    from claudio_daemon.rules.loader import load_rules

    rules = write_rules(
        tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model, away="armed: true"
    )
    service = MqttPublisher(load_rules(rules).mqtt)  # the running service's connection
    lost: list[object] = []
    with Subscriber(mosquitto.host, mosquitto.port, ["#"], client_id="watcher") as sub:
        service.start()
        try:
            assert service.wait_connected(5) and service._client is not None
            handler = service._client.on_disconnect
            service._client.on_disconnect = lambda *a: (lost.append(a[3]), handler(*a))
            service.publish_away_state(False)
            assert service.flush(5)
            app.run_replay(
                scene_files["two_three"],
                rules_path=rules,
                model_path=None,
                json_out=None,
                publish=True,
                use_classifier=False,
            )
            sub.wait_for(lambda m: any(t == TV for t, *_ in m), 5)
            time.sleep(0.5)
            assert lost == [] and service.connected
        finally:
            service.stop(timeout=1)
        got = [(t, p) for t, p, *_ in sub.messages]
    sent = [p for t, p in got if t in (LAMP, TV)]
    assert sent == [b"TOGGLE", b'{"state": "TOGGLE"}']
    assert [p for t, p in got if t == "claudio/claps"] != []  # its events go out too
    # Availability: the service's online, then its own offline at its stop; nothing else.
    assert [p for t, p in got if t == "claudio/available"] == [b"online", b"offline"]
    assert [p for t, p in got if t == "claudio/away/state"] == [b"OFF"]
    assert not [t for t, _ in got if t.startswith("homeassistant/")]
    assert not [t for t, _ in got if t == "claudio/level"]  # the room's sensor, not a file's


def test_a_withdrawal_the_broker_never_took_is_sent_again(
    tiny_onnx_model: Path, tmp_path: Path, mosquitto
) -> None:
    """The first run after a client_id change never reached the broker (down at boot, a
    password fixed later): the record already named only the new topics, so no later run
    withdrew the old device, a ghost in Home Assistant for good."""
    from tests.fixtures.broker import _free_port

    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(SR // 2, np.float32))
    state = tmp_path / "state"
    state.mkdir()

    def run_once(client_id: str, port: int) -> None:
        text = rules.read_text()
        text = re.sub(r"client_id: \S+", f"client_id: {client_id}", text)
        rules.write_text(re.sub(r"port: \d+", f"port: {port}", text))
        env = os.environ | {"STATE_DIRECTORY": str(state)}
        daemon("run", "--rules", str(rules), "--input", str(wav), env=env, check=True)

    run_once("kitchen", mosquitto.port)
    run_once("garage", _free_port())  # the broker is out of reach for this whole run
    assert any("/kitchen/" in t for t in json.loads((state / "discovery.json").read_text()))
    run_once("garage", mosquitto.port)
    with Subscriber(mosquitto.host, mosquitto.port, ["homeassistant/#"]) as ha:
        time.sleep(0.5)
        retained = {t for t, p, kept in ha.messages if p and kept}
    assert retained and all("/garage/" in t for t in retained), retained
    # Once delivered, the record holds only what is announced now.
    assert all("/garage/" in t for t in json.loads((state / "discovery.json").read_text()))
