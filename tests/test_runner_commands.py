"""Remote commands reach the pipeline through Runner, live ones only (real Mosquitto)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from claudio_daemon.mqtt.publisher import MqttPublisher
from claudio_daemon.mqtt.settings import MqttSettings
from claudio_daemon.pipeline import Pipeline
from claudio_daemon.rules.loader import parse_rules
from claudio_daemon.runner import Runner
from tests.fixtures.broker import Subscriber

TOPIC = "claudio/away/set"
RULES = """\
mqtt: {{host: 127.0.0.1, port: {port}}}
appliances:
  lamp: {{preset: tasmota, topic: lamp}}
triggers:
  - claps: 2
    actions: [lamp: toggle]
"""


def _wait(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def test_retained_away_command_is_ignored_live_one_applied(mosquitto, caplog) -> None:
    # A retained ON (`mosquitto_pub -r`, or a switch with retain on) replays on every
    # (re)connect: applied, it would re-arm AWAY after each broker restart.
    caplog.set_level(logging.WARNING, logger="claudio_daemon.runner")
    with Subscriber(mosquitto.host, mosquitto.port, ["x/none"]) as ctl:
        ctl.client.publish(TOPIC, "ON", qos=1, retain=True).wait_for_publish(5)
        runner = Runner(Pipeline(parse_rules(RULES.format(port=mosquitto.port)), None))
        settings = MqttSettings(
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=f"claudio-runner-{os.getpid()}",
            discovery={"enabled": False},
        )
        publisher = MqttPublisher(settings, on_command=runner.on_command)
        publisher.start()
        try:
            assert publisher.wait_subscribed(5)
            assert _wait(lambda: not runner.commands.empty()), "retained ON never delivered"
            runner._apply_commands()
            assert runner.pipeline.engine.away is False, "a retained command armed AWAY"
            warnings = [r.getMessage() for r in caplog.records]
            assert len(warnings) == 1, warnings
            assert "retained" in warnings[0]
            assert f"mosquitto_pub -r -n -t {TOPIC}" in warnings[0]

            ctl.client.publish(TOPIC, "ON", qos=1).wait_for_publish(5)
            assert _wait(lambda: not runner.commands.empty()), "live ON never delivered"
            runner._apply_commands()
            assert runner.pipeline.engine.away is True
            assert len(caplog.records) == 1
        finally:
            publisher.stop(timeout=1)
