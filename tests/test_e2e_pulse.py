"""End to end as a person would: claps played into a microphone, commands out over MQTT.

The microphone is a real PulseAudio null sink's monitor (tests/fixtures/pulse.py); the
daemon opens it by name ("pulse") through sounddevice, PortAudio and ALSA's pulse plugin,
exactly as it opens a USB microphone at home. The recording (two claps, a pause, three
claps over real rain) is built from ESC-50 clips and played with `paplay`; a real MQTT
subscriber on a real Mosquitto checks what the lamp and the TV received.

scripts/e2e-pulse.sh is the same check for a user to run by hand.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from claudio_daemon.mqtt.publisher import publish_once
from claudio_daemon.rules.loader import load_rules
from tests.daemon_helpers import Daemon, NotifySocket, write_rules, write_wav
from tests.fixtures.broker import Broker, Subscriber
from tests.fixtures.pulse import PulseServer

scenes = pytest.importorskip("bench.scenes")

LAMP = "cmnd/lamp/POWER"
TV = "zigbee2mqtt/living_room_tv/set"
AVAILABLE = "claudio/available"
AWAY_STATE = "claudio/away/state"


@pytest.fixture(scope="module")
def two_then_three(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Two claps, about 2.5 s of room, three claps: real claps over real quiet rain."""
    roots = [shared_data / "esc50-16k-folds123", shared_data / "esc50-fold4-dev"]
    claps = [c for c in scenes.cut_single_claps(roots) if scenes.clap_shaped(c)]
    assert len(claps) >= 3, f"bench.scenes.cut_single_claps found {len(claps)} claps in {roots}"
    bg = dict(scenes.load_backgrounds(roots[1], ["rain"], per_category=1))["rain"]
    rng = np.random.default_rng(23)
    two = scenes.make_pattern_scene(claps, 2, [0.45], ("rain", bg), 25.0, rng, tail_s=1.5)
    three = scenes.make_pattern_scene(claps, 3, [0.4, 0.5], ("rain", bg), 25.0, rng, tail_s=2.0)
    audio = np.concatenate([two.audio, three.audio])
    return write_wav(tmp_path_factory.mktemp("pulse-e2e") / "two_then_three.wav", audio)


@pytest.fixture
def portaudio_pulse(pulse_server: PulseServer) -> PulseServer:
    """The pulse server, once PortAudio can see it as an input (else skip, saying why)."""
    try:
        from claudio_daemon.audio.source import list_input_devices
    except OSError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PortAudio is not available ({exc}); apt install libportaudio2")
    try:
        names = [d.name for d in list_input_devices()]
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PortAudio cannot list inputs: {exc}")
    if pulse_server.portaudio_device not in names:  # pragma: no cover
        pytest.skip(
            f"no {pulse_server.portaudio_device!r} input in PortAudio ({names}); "
            "ALSA's pulse plugin (libasound2-plugins) is missing"
        )
    return pulse_server


def recording_pids(pulse: PulseServer) -> set[int]:
    """Processes that have a record stream open on the server right now."""
    listing = pulse.pactl("list", "source-outputs")
    return {int(p) for p in re.findall(r'application\.process\.id = "(\d+)"', listing)}


def wait_until(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("mic_at_start", [True, False], ids=["mic-present", "mic-plugged-later"])
def test_claps_into_the_microphone_switch_lamp_and_tv(
    two_then_three: Path,
    portaudio_pulse: PulseServer,
    mosquitto: Broker,
    tiny_onnx_model: Path,
    tmp_path: Path,
    mic_at_start: bool,
) -> None:
    """Also with the microphone missing when the service starts (a USB one plugged in after
    boot): it tells systemd it is waiting, and listens once the device is there."""
    pulse = portaudio_pulse
    rules = write_rules(tmp_path / "rules.yaml", port=mosquitto.port, model=tiny_onnx_model)
    notify = NotifySocket(tmp_path)
    plugged = mic_at_start
    if not plugged:
        pulse.remove_sink()
    with Subscriber(mosquitto.host, mosquitto.port, ["#"]) as sub:
        daemon = Daemon(
            ["run", "--rules", str(rules), "--device", pulse.portaudio_device],
            env={**pulse.env, "NOTIFY_SOCKET": str(notify.path)},
        )
        try:
            notify.wait_for("READY=1", timeout=30)
            if not mic_at_start:
                assert any("waiting for microphone" in m for m in notify.messages)
                # Still a service while it waits: an AWAY command is applied now, not once
                # the microphone is back.
                sub.wait_for(lambda m: any(t == AWAY_STATE for t, _, _ in m), timeout=10)
                publish_once(load_rules(rules).mqtt, "claudio/away/set", "ON")
                sub.wait_for(lambda m: any(t == AWAY_STATE and p == b"ON" for t, p, _ in m))
                assert daemon.proc.poll() is None, "the daemon gave up on a missing microphone"
                pulse.add_sink()
                plugged = True
            # READY comes just before the audio stream opens: wait until the daemon's own
            # record stream is on the server, so not a clap is played to nobody.
            pid = daemon.proc.pid

            def listening() -> bool:
                assert daemon.proc.poll() is None, f"daemon exited: {daemon.wait(5)}"
                return pid in recording_pids(pulse)

            wait_until(listening, 15, "the daemon records from PulseAudio")
            sub.wait_for(lambda m: any(t == AVAILABLE and p == b"online" for t, p, _ in m))

            pulse.play(two_then_three)  # returns when the last sample has been played
            sub.wait_for(lambda m: any(t == TV for t, _, _ in m), timeout=10)
            daemon.terminate()
            code, _, err = daemon.wait(timeout=20)
        finally:
            daemon.kill()
            notify.close()
            if not plugged:
                pulse.add_sink()
        assert code == 0, err
        sub.wait_for(lambda m: [p for t, p, _ in m if t == AVAILABLE][-1:] == [b"offline"])

        assert sub.payloads(LAMP) == [b"TOGGLE"], err
        assert sub.payloads(TV) == [b'{"state": "TOGGLE"}'], err
        topics = [t for t, _, _ in sub.messages]
        assert topics.index(LAMP) < topics.index(TV)
        assert all(not retain for t, _, retain in sub.messages if t in (LAMP, TV))
        assert sub.payloads(AVAILABLE)[-1] == b"offline"
        events = [json.loads(p) for p in sub.payloads("claudio/event")]
        assert [e["count"] for e in events if e["type"] == "claps"] == [2, 3]
    assert "'pulse'" in err and "listening on [" in err
    assert notify.messages.index("READY=1") < notify.messages.index("STOPPING=1")


def test_in_a_terminal_a_missing_microphone_fails_at_once(
    portaudio_pulse: PulseServer, tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """Outside systemd nobody waits: exit 2 naming the device, so a person (or the quick
    start, which then plays the demo) hears it now; --wait-for-device waits anyway."""
    pulse = portaudio_pulse
    rules = write_rules(tmp_path / "rules.yaml", port=1, model=tiny_onnx_model)
    pulse.remove_sink()
    try:
        args = ["run", "--rules", str(rules), "--device", pulse.portaudio_device]
        code, _, err = Daemon(args, env=pulse.env).wait(timeout=30)
        assert code == 2, err
        assert "cannot open audio input" in err and "'pulse'" in err
        waiting = Daemon([*args, "--wait-for-device"], env=pulse.env)
        try:
            time.sleep(4.0)
            assert waiting.proc.poll() is None, "gave up despite --wait-for-device"
            waiting.terminate()
            code, _, err = waiting.wait(timeout=20)
        finally:
            waiting.kill()
        assert code == 0 and "waiting for it" in err, err
    finally:
        pulse.add_sink()
