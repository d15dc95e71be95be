"""The loop around the pipeline: audio source in; MQTT, JSON lines and logs out.

It owns the edges (signals, systemd notifications, rule reloads, remote commands) so that
`Pipeline` stays pure. Remote commands arrive on paho's thread and wait in a queue; they are
applied here, between audio blocks, so all state changes happen on one thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol, TextIO

from claudio_daemon.audio.source import AudioSource
from claudio_daemon.events import (
    Action,
    Alert,
    ClapPattern,
    Event,
    LevelReading,
    ModeChange,
    SoundEvent,
    to_dict,
)
from claudio_daemon.mqtt.commands import RemoteCommand
from claudio_daemon.pipeline import Pipeline

log = logging.getLogger(__name__)

#: Housekeeping (reload check, watchdog, status) runs this often, in audio seconds.
HOUSEKEEPING_S = 0.5
STATUS_S = 10.0
#: Dropped audio is said at most this often (audio seconds), with the count since.
OVERFLOW_REPORT_S = 60.0


class Publisher(Protocol):
    def send_action(self, action: Action) -> None: ...
    def publish_event(self, event: ClapPattern | SoundEvent) -> None: ...
    def publish_alert(self, alert: Alert) -> None: ...
    def publish_level(self, reading: LevelReading) -> None: ...
    def publish_away_state(self, away: bool) -> None: ...


class Notifier(Protocol):
    def watchdog(self) -> None: ...
    def status(self, text: str) -> None: ...


class Runner:
    """Drives one pipeline from one source until the source ends or `stop()` is called."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        publisher: Publisher | None = None,
        json_out: TextIO | None = None,
        json_levels: bool = False,
        text_out: TextIO | None = None,
        notifier: Notifier | None = None,
        housekeeping: Callable[[], None] | None = None,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.publisher = publisher
        self.json_out = json_out
        self.json_levels = json_levels
        #: Where a replay in a terminal shows what happened, one line an event (the log
        #: says it too, but a replay logs warnings only by default).
        self.text_out = text_out
        self.notifier = notifier
        self.housekeeping = housekeeping
        #: Called once, when the first audio arrives: a microphone opens inside blocks(),
        #: so only then is the daemon really listening (systemd's READY=1).
        self.on_listening = on_listening
        #: Something `systemctl status` must keep showing (the last rejected edit of
        #: rules.yaml), or None; the periodic status line would otherwise replace it.
        self.status_note: Callable[[], str | None] | None = None
        #: Told of every AWAY change (the service saves it, so a restart keeps it).
        self.on_away_change: Callable[[ModeChange], None] | None = None
        self.commands: queue.SimpleQueue[RemoteCommand] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._source: AudioSource | None = None
        self._overflows_said = 0
        self._overflow_said_at: int | None = None

    # Called from paho's network thread.
    def on_command(self, command: RemoteCommand) -> None:
        self.commands.put(command)

    def stop(self) -> None:
        """Safe from a signal handler or another thread: ends the loop after this block."""
        self._stop.set()
        if self._source is not None:
            self._source.close()

    def set_away(self, armed: bool, source: str) -> None:
        for event in self.pipeline.set_away(armed, source):
            self.dispatch(event)

    def run(self, source: AudioSource) -> None:
        self._source = source
        sr = self.pipeline.sample_rate
        next_housekeeping = 0
        next_status = 0
        if self._stop.is_set():
            source.close()
        for block in source.blocks():
            if self.on_listening is not None:
                self.on_listening()
                self.on_listening = None
            self._apply_commands()
            self.pipeline.skip(block.gap_before)
            for event in self.pipeline.process(block.samples):
                self.dispatch(event)
            end = block.start_sample + block.samples.size
            if end >= next_housekeeping:
                next_housekeeping = end + int(HOUSEKEEPING_S * sr)
                if self.housekeeping is not None:
                    self.housekeeping()
                self._say_overflows(source, end)
                if self.notifier is not None:
                    self.notifier.watchdog()
                    if end >= next_status:
                        next_status = end + int(STATUS_S * sr)
                        self.notifier.status(self.status_line(source))
            if self._stop.is_set():
                break
        if not self._stop.is_set():  # the recording ended: nothing is left undecided
            for event in self.pipeline.finish():
                self.dispatch(event)
        self._apply_commands()

    def _say_overflows(self, source: AudioSource, now: int) -> None:
        """Audio dropped because the loop fell behind the microphone (a Pi whose CPU is
        busy elsewhere, a classifier too slow for it) loses claps without a trace: the
        journal hears it, at most once a minute of audio, with the count since."""
        dropped = source.overflows - self._overflows_said
        if dropped <= 0:
            return
        every = int(OVERFLOW_REPORT_S * self.pipeline.sample_rate)
        if self._overflow_said_at is not None and now - self._overflow_said_at < every:
            return
        log.warning(
            "audio input: audio dropped %d time%s (%d since the start): this machine does "
            "not keep up with the microphone, and claps may be missed; give the daemon more "
            "CPU, or raise model.classify_every_s in rules.yaml",
            dropped,
            "" if dropped == 1 else "s",
            source.overflows,
        )
        self._overflows_said = source.overflows
        self._overflow_said_at = now

    def status_line(self, source: AudioSource) -> str:
        p = self.pipeline
        s = p.stats
        line = (
            f"level {p.level_db:.0f} dB (floor {p.noise_floor_db:.0f}); "
            f"{s.patterns} clap patterns, {s.sounds} sounds, {s.actions} actions; "
            f"AWAY {'armed' if p.engine.away else 'off'}; overflows {source.overflows}"
        )
        if s.lost:
            line += f" ({s.lost / p.sample_rate:.1f} s of audio lost)"
        note = self.status_note() if self.status_note is not None else None
        return f"{line}; {note}" if note else line

    def idle(self) -> None:
        """While no audio comes (a microphone waited for), on the audio loop's thread: MQTT
        commands and rules edits are still applied, not held until the device is back."""
        self._apply_commands()
        if self.housekeeping is not None:
            self.housekeeping()

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            if command.retained:
                # A retained command replays on every (re)connect and would undo whatever
                # was set since: e.g. re-arm AWAY after each broker restart. Only live ones count.
                log.warning(
                    "MQTT: ignoring retained %s command on %s: a retained message is stored on "
                    "that topic; clear it with: mosquitto_pub -r -n -t %s",
                    command.kind,
                    command.topic,
                    command.topic,
                )
                continue
            if command.kind == "away":
                self.set_away(command.value, "mqtt")

    def dispatch(self, event: Event) -> None:
        sr = self.pipeline.sample_rate
        if self.json_out is not None and (self.json_levels or not isinstance(event, LevelReading)):
            self.json_out.write(json.dumps(to_dict(event, sr)) + "\n")
            self.json_out.flush()
        line = describe(event, sr)
        if line is not None:
            log.log(logging.WARNING if isinstance(event, Alert) else logging.INFO, "%s", line)
            if self.text_out is not None:
                self.text_out.write(line + "\n")
                self.text_out.flush()
        if isinstance(event, ModeChange) and self.on_away_change is not None:
            self.on_away_change(event)
        if self.publisher is None:
            return
        if isinstance(event, Action):
            self.publisher.send_action(event)
        elif isinstance(event, (ClapPattern, SoundEvent)):
            self.publisher.publish_event(event)
        elif isinstance(event, Alert):
            self.publisher.publish_alert(event)
        elif isinstance(event, ModeChange):
            self.publisher.publish_away_state(event.away)
        elif isinstance(event, LevelReading):
            self.publisher.publish_level(event)


def describe(event: Event, sample_rate: int) -> str | None:
    """One line for a person: what the daemon did or heard, and when in the stream."""
    t = event.sample / sample_rate
    if isinstance(event, Action):
        return f"{event.appliance} {event.command} ({event.reason}) at {t:.2f}s"
    if isinstance(event, ClapPattern):
        return f"{event.count} claps at {t:.2f}s"
    if isinstance(event, SoundEvent):
        return f"sound {event.label} {event.score:.2f} at {t:.2f}s"
    if isinstance(event, Alert):
        return f"AWAY alert: {event.label or 'sound'} at {event.level_db:.1f} dB, {t:.2f}s"
    if isinstance(event, ModeChange):
        return f"AWAY {'armed' if event.away else 'disarmed'} ({event.source}) at {t:.2f}s"
    return None
