"""The daemon's only MQTT client: publishes commands and events, receives AWAY commands.

Threads and locks
-----------------
* Callers (the audio/rules thread) only append to a bounded outbox under a short lock and
  return: nothing here blocks on the network.
* A small sender thread moves outbox entries into paho (it is the only code that calls
  `client.publish` for outbox entries) and matches broker acknowledgements to entries.
* paho's network thread (`loop_start`) runs the callbacks. They never take the outbox lock
  (paho holds its own locks while calling them, so taking ours could deadlock); they only
  set flags, append to a deque and wake the sender.
* `on_command` is called from paho's thread: hand the command to a queue and return.

Delivery: at-least-once, in order
---------------------------------
An entry leaves the outbox only when the broker acknowledges it (PUBACK for QoS 1), so a
broker restart or network outage loses nothing: entries wait, bounded by `queue_max`, and
go out after the reconnect. At most `_WINDOW` entries are in flight. paho re-sends its own
in-flight messages right after a reconnect; new entries wait until those are acknowledged,
which keeps the order. Should paho not re-send them within `resend_grace_s`, the sender
publishes them again itself. A message whose acknowledgement was lost is therefore sent
twice: receivers may see duplicates (a TOGGLE twice is possible after a broker crash), never
gaps. When the outbox is full the oldest level readings go first, then events, then
alerts/state; commands are dropped only when nothing else is left.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from claudio_daemon import __version__
from claudio_daemon.events import (
    Action,
    Alert,
    ClapPattern,
    Event,
    LevelReading,
    SoundEvent,
    to_dict,
)
from claudio_daemon.mqtt.commands import CommandError, RemoteCommand, describe_payload, parse_away
from claudio_daemon.mqtt.discovery import discovery_messages
from claudio_daemon.mqtt.settings import MqttSettings
from claudio_daemon.mqtt.topics import OFFLINE, ONLINE, STATE_OFF, STATE_ON, Topics, clap_event_type
from claudio_daemon.rules.secrets import expand_path

log = logging.getLogger(__name__)


def _demote_not_connected(record: logging.LogRecord) -> bool:
    """paho logs "Client is not connected" at ERROR on every reconnect attempt while the
    broker is down (and once more after a clean disconnect). The outage is already reported
    once ("cannot reach broker"), so these go to DEBUG with the rest of paho's packet trace.
    """
    if record.levelno > logging.DEBUG and record.getMessage().startswith("Client is not connected"):
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        # The logger let it through as an ERROR; as DEBUG it is written only where DEBUG is.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True


ClientFactory = Callable[[MqttSettings], mqtt.Client]
CommandHandler = Callable[[RemoteCommand], None]

#: Most outbox entries handed to paho and not yet acknowledged.
_WINDOW = 20
#: How often the sender looks at the outbox without being woken (safety net).
_TICK_S = 0.5
#: Log one "dropped" warning per this many dropped non-command messages.
_DROP_LOG_EVERY = 100


class Priority(IntEnum):
    """What to sacrifice first when the outbox overflows (lowest first)."""

    LEVEL = 0
    EVENT = 1
    STATE = 2
    COMMAND = 3


@dataclass
class _Entry:
    topic: str
    payload: bytes
    retain: bool
    priority: Priority
    #: A newer entry with the same key replaces an unsent older one (latest state wins).
    key: str | None = None
    #: paho message id once handed over; None while waiting in the outbox.
    mid: int | None = None
    #: Connection generation when handed over: older means paho must re-send it.
    generation: int = 0
    #: time.monotonic() when queued: network delays are real time, not audio time.
    queued_at: float = field(default_factory=time.monotonic)
    #: A device toggle: a second one queued behind it, unsent, undoes it.
    toggle: bool = False


def default_client_factory(settings: MqttSettings) -> mqtt.Client:
    """A plain paho v2 client; tests and special transports can pass their own factory."""
    if settings.protocol == "5":
        return mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
        )
    # A clean session is enough: the outbox, not the broker, keeps what we still owe.
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )


def configure_security(client: mqtt.Client, settings: MqttSettings) -> None:
    """Credentials and TLS from settings; ValueError names a missing secret or file."""
    if settings.username:
        client.username_pw_set(settings.username, settings.password())
    tls = settings.tls
    if not tls.enabled:
        return
    files: dict[str, str | None] = {}
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None:
            # As for password_file: a client key handed over by LoadCredential= lives
            # under ${CREDENTIALS_DIRECTORY}.
            path = expand_path(path)
            if not path.is_file():
                raise ValueError(f"mqtt.tls.{name}: {path} does not exist")
        files[name] = str(path) if path is not None else None
    client.tls_set(
        ca_certs=files["ca_file"],
        certfile=files["cert_file"],
        keyfile=files["key_file"],
        cert_reqs=ssl.CERT_REQUIRED,
    )
    if tls.insecure:
        log.warning("mqtt.tls.insecure: the broker's host name is not verified")
        client.tls_insecure_set(True)


@dataclass(frozen=True)
class Confirm:
    """What a CLI command expects back from the running daemon: `payload` on `topic` (not
    the retained copy), and the daemon's availability topic to say why it did not come."""

    topic: str
    payload: bytes
    available_topic: str
    timeout: float = 5.0


@dataclass(frozen=True)
class Confirmation:
    confirmed: bool
    #: The daemon's retained availability ("online"/"offline"), None if it never said.
    available: str | None


def publish_once(
    settings: MqttSettings,
    topic: str,
    payload: str | bytes,
    *,
    retain: bool = False,
    timeout: float = 5.0,
    confirm: Confirm | None = None,
    client_factory: ClientFactory | None = None,
) -> Confirmation | None:
    """Publish one message and wait for the broker's acknowledgement (CLI use, blocking);
    with `confirm`, also for the daemon's answer (a broker accepts a command whether or not
    anyone listens, so its acknowledgement alone says nothing about the house).

    Uses its own client id (`<client_id>-cli-<pid>`): reusing the daemon's would make the
    broker disconnect the running daemon. Raises OSError (unreachable; ConnectionRefusedError
    when the broker refuses, e.g. bad credentials), TimeoutError, or ValueError (settings).
    """
    cli = settings.model_copy(update={"client_id": f"{settings.client_id}-cli-{os.getpid()}"})
    client = (client_factory or default_client_factory)(cli)
    configure_security(client, cli)
    answered = threading.Event()
    subscribed = threading.Event()
    confirmed = threading.Event()
    reasons: list[Any] = []
    available: list[str] = []

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        reasons.append(reason)
        answered.set()

    def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, p: Any) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if confirm is None:
            return
        if msg.topic == confirm.available_topic:
            available.append(msg.payload.decode("utf-8", "replace"))
        elif msg.topic == confirm.topic and not msg.retain and msg.payload == confirm.payload:
            confirmed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(cli.host, cli.port, keepalive=cli.keepalive_s)
    client.loop_start()
    try:
        if not answered.wait(timeout):
            raise TimeoutError(f"no answer from {cli.host}:{cli.port} within {timeout:g}s")
        if reasons[0].is_failure:
            raise ConnectionRefusedError(f"broker refused the connection: {reasons[0]}")
        if confirm is not None:
            # Subscribed before the command goes out, so the answer cannot be missed.
            client.subscribe([(confirm.topic, settings.qos), (confirm.available_topic, 1)])
            if not subscribed.wait(timeout):
                raise TimeoutError(f"{confirm.topic}: no subscription within {timeout:g}s")
        info = client.publish(topic, payload, settings.qos, retain)
        try:
            info.wait_for_publish(timeout)
        except RuntimeError as e:
            raise ConnectionError(f"connection lost before {topic} was sent: {e}") from e
        if not info.is_published():
            raise TimeoutError(f"{topic} not acknowledged within {timeout:g}s")
        if confirm is None:
            return None
        ok = confirmed.wait(confirm.timeout)
        return Confirmation(confirmed=ok, available=available[-1] if available else None)
    finally:
        client.disconnect()
        client.loop_stop()


def _valid_publish_topic(topic: str) -> bool:
    return (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
        and len(topic.encode("utf-8")) <= 65535
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity (silence can be -inf dBFS): map them to null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(_finite(data), separators=(",", ":"), allow_nan=False).encode("utf-8")


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class MqttPublisher:
    """Publishes Claudio's commands, events and state; receives AWAY commands.

    `start()` returns at once (connect_async + loop_start); `connected` becomes true only
    after the broker accepted the connection. Every `publish_*`/`send_action` call only
    queues, so it is safe from the audio thread.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_command: CommandHandler | None = None,
        client_factory: ClientFactory | None = None,
        sample_rate: int = 22050,
        guest: bool = False,
    ) -> None:
        """`guest`: a short visit beside the running service (`replay --publish`), which
        only sends what the replay heard and did. It must not act as the service: it uses
        its own client id (the broker would disconnect the service for sharing one), and
        says nothing about availability or AWAY state, announces nothing and listens to
        no command."""
        if guest:
            settings = settings.model_copy(
                update={"client_id": f"{settings.client_id}-replay-{os.getpid()}"}
            )
        self.guest = guest
        self.settings = settings
        self.topics = Topics(settings.topic_prefix, settings.discovery.prefix)
        self.sample_rate = sample_rate
        #: Seconds after a reconnect before un-acknowledged entries are re-sent by us.
        self.resend_grace_s = 5.0
        self._on_command = on_command
        self._factory = client_factory or default_client_factory
        self._window = max(1, min(_WINDOW, settings.queue_max // 2))

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outbox: OrderedDict[int, _Entry] = OrderedDict()
        self._inflight: dict[int, _Entry] = {}
        self._seq = itertools.count()
        self._dropped = 0
        self._closed = False
        self._discovery: list[tuple[str, dict[str, Any]]] = []
        #: Withdrawals (empty retained configs) an MQTT 5 broker refused this run.
        self._refused_withdrawals: set[str] = set()
        self._away: bool | None = None
        #: Clap counts announced as HA event types (None: not configured, all are sent).
        self._clap_counts: frozenset[int] | None = None
        self._warned_retain = False

        # Written by paho's thread, read by the sender (single writes: no lock needed).
        self._acks: deque[tuple[int, Any]] = deque()
        #: Message ids paho was told not to re-send at a reconnect (written on its thread).
        self._withheld: deque[int] = deque()
        #: paho message id -> queue time of each device command handed to paho and not
        #: yet acknowledged (written by the sender, read on connect by paho's thread).
        self._commands_out: dict[int, float] = {}
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._generation = 0
        self._connected_at = 0.0
        self._connect_work = False
        self._discovery_due = False
        self._stopping = False
        self._reported_unreachable = False
        self._reported_refusal: str | None = None

        self._client: mqtt.Client | None = None
        self._sender: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def connected(self) -> bool:
        """True only between an accepted CONNACK and the next disconnect."""
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """Entries not yet acknowledged by the broker (queued or in flight)."""
        with self._lock:
            return len(self._outbox)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker confirmed the command subscriptions of this connection."""
        return self._subscribed.wait(timeout)

    def start(self) -> None:
        """Configure the client and connect in the background; never blocks on the network.

        Raises ValueError for configuration problems found now (missing password, TLS files).
        """
        if self._client is not None:
            raise RuntimeError("MqttPublisher.start() called twice")
        s = self.settings
        client = self._factory(s)
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        if not self.guest:
            client.will_set(self.topics.available, OFFLINE, qos=s.qos, retain=True)
        configure_security(client, s)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)  # type: ignore[arg-type]
        client.max_inflight_messages_set(self._window)
        paho_log = logging.getLogger(f"{__name__}.paho")  # DEBUG: packet trace
        paho_log.addFilter(_demote_not_connected)  # once per logger: addFilter skips repeats
        client.enable_logger(paho_log)
        self._client = client
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()
        log.info(
            "MQTT: connecting to %s:%d as %s%s",
            s.host,
            s.port,
            s.client_id,
            " (TLS)" if s.tls.enabled else "",
        )
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()

    def flush(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged everything queued; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._outbox:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, _TICK_S))
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued (up to `timeout`), say "offline", disconnect cleanly.

        Returns False when messages were left undelivered (they are logged).
        """
        client = self._client
        if client is None or self._closed:
            return not self._outbox
        deadline = time.monotonic() + timeout
        delivered = self.flush(timeout)
        with self._lock:
            self._closed = True
            left = list(self._outbox.values())
        if not delivered:
            commands = sum(e.priority is Priority.COMMAND for e in left)
            if commands:
                log.error("MQTT: stopping with %d undelivered command(s) lost", commands)
            log.warning("MQTT: stopping with %d undelivered message(s)", len(left))
        self._stopping = True
        if self.connected and not self.guest:
            try:
                info = client.publish(self.topics.available, OFFLINE, self.settings.qos, True)
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as e:
                log.warning("MQTT: could not publish offline state: %s", e)
        # The sender goes first, so nothing touches the client once it is disconnected.
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=2.0)
        # paho's network thread may run once more after DISCONNECT has closed the socket and
        # logs "not connected"; _demote_not_connected (installed in start) keeps that quiet.
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        log.info("MQTT: disconnected")
        return delivered

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------- outgoing

    def send_action(self, action: Action) -> None:
        """Queue a device command on the appliance's own topic (never retained)."""
        if action.retain and not self._warned_retain:
            self._warned_retain = True
            log.warning(
                "MQTT: device commands are never retained (a retained TOGGLE would replay on "
                "every reconnect); ignoring retain for %s",
                action.topic,
            )
        self._enqueue(
            action.topic,
            action.payload.encode("utf-8"),
            Priority.COMMAND,
            toggle=action.command == "toggle",
        )

    def publish_event(self, event: Event) -> None:
        """Every clap pattern or sound as JSON on <prefix>/event, plus the HA event topics."""
        self._enqueue(self.topics.event, self._event_json(event), Priority.EVENT)
        if isinstance(event, ClapPattern):
            # Home Assistant rejects (and logs) an event type it was not told of: a single
            # stray clap with rules for two and three is no event there.
            if self._clap_counts is None or event.count in self._clap_counts:
                ha = {"event_type": clap_event_type(event.count), "count": event.count}
                self._enqueue(self.topics.claps, _json(ha), Priority.EVENT)
        elif isinstance(event, SoundEvent):
            ha = {"event_type": event.label, "score": round(event.score, 4)}
            self._enqueue(self.topics.sound, _json(ha), Priority.EVENT)

    def publish_alert(self, alert: Alert) -> None:
        self._enqueue(self.topics.alert, self._event_json(alert), Priority.STATE)

    def publish_level(self, reading: LevelReading) -> None:
        """The level as a bare dBFS number (HA sensor state); only the latest is kept queued."""
        if not math.isfinite(reading.level_db):
            return
        if self.guest:
            return  # the room's level sensor is the service's, not a recording's
        payload = f"{reading.level_db:.1f}".encode()
        self._enqueue(self.topics.level, payload, Priority.LEVEL, key="level")

    def publish_away_state(self, away: bool) -> None:
        """Retained ON/OFF; re-published after every reconnect."""
        if self.guest:
            return  # the service's state, not a replay's
        self._away = away
        self._enqueue_away(away)

    @property
    def discovery_topics(self) -> list[str]:
        """The discovery config topics announced now (none while discovery is off)."""
        return [t for t, _ in self._discovery]

    @property
    def refused_withdrawals(self) -> list[str]:
        """Discovery topics whose withdrawal the broker refused (MQTT 5 reports it; 3.1.1
        brokers drop a refused message without a word)."""
        with self._lock:
            return sorted(self._refused_withdrawals - set(self.discovery_topics))

    def publish_discovery(self, messages: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Retained HA discovery configs; re-sent on reconnect and when HA comes online.

        Does nothing when `discovery.enabled` is false, so callers need not check.
        """
        if not self.settings.discovery.enabled:
            return
        new = list(messages)
        gone = {t for t, _ in self._discovery} - {t for t, _ in new}
        self._discovery = new
        # What a reload took away (a clap count no rule uses now).
        self.withdraw_discovery(gone)
        self._enqueue_discovery()

    def withdraw_discovery(self, topics: Iterable[str]) -> None:
        """An empty retained config is how Home Assistant is told to remove an entity or
        trigger; topics announced now, and names no topic can have, are left alone."""
        keep = set(self.discovery_topics)
        gone = sorted(t for t in set(topics) - keep if _valid_publish_topic(t))
        with self._lock:
            for topic in gone:
                self._put_locked(topic, b"", Priority.STATE, True, topic)

    def configure_discovery(
        self,
        *,
        clap_counts: list[int],
        sound_labels: list[str],
        device_name: str | None = None,
        sw_version: str | None = None,
    ) -> None:
        """Build and queue Home Assistant discovery (see discovery.py) for this daemon.

        The clap counts announced are also the only ones sent as events on <prefix>/claps
        (<prefix>/event carries every pattern).
        """
        self._clap_counts = frozenset(clap_counts)
        if self.guest:
            return  # a replay announces nothing; the counts still filter its events
        self.publish_discovery(
            discovery_messages(
                self.settings,
                device_name=device_name or f"Claudio {socket.gethostname()}",
                sw_version=sw_version or __version__,
                clap_counts=clap_counts,
                sound_labels=sound_labels,
            )
        )

    def _event_json(self, event: Event) -> bytes:
        data = to_dict(event, self.sample_rate)
        data["ts"] = _now_iso()
        return _json(data)

    def _enqueue_away(self, away: bool) -> None:
        payload = (STATE_ON if away else STATE_OFF).encode()
        self._enqueue(self.topics.away_state, payload, Priority.STATE, retain=True, key="away")

    def _enqueue_discovery(self) -> None:
        with self._lock:
            self._enqueue_discovery_locked()
        self._wake.set()

    def _enqueue(
        self,
        topic: str,
        payload: bytes,
        priority: Priority,
        *,
        retain: bool = False,
        key: str | None = None,
        toggle: bool = False,
    ) -> None:
        if not _valid_publish_topic(topic):
            log.error("MQTT: refusing to publish to invalid topic %r", topic)
            return
        with self._lock:
            if self._closed:
                log.debug("MQTT: publisher stopped; not sending to %s", topic)
                return
            if toggle and self._cancel_toggle_locked(topic):
                return
            self._put_locked(topic, payload, priority, retain, key, toggle=toggle)
        self._wake.set()

    def _cancel_toggle_locked(self, topic: str) -> bool:
        """Two toggles of one device waiting for the broker leave it as it was: both go, or
        the lamp would flash on and off when the broker returns. Only when the device's
        latest command is that unsent toggle (an "on" between them must stay in order)."""
        for seq, e in reversed(self._outbox.items()):
            if e.topic != topic or e.priority is not Priority.COMMAND:
                continue
            if not (e.toggle and e.mid is None):
                return False
            if self._drop_if_stale_locked(e, time.monotonic()):
                return False  # too old to be sent: the new toggle goes alone
            del self._outbox[seq]
            log.info("MQTT: two toggles of %s waited for the broker; they cancel out", topic)
            return True
        return False

    def _make_room(self, new: _Entry) -> bool:
        """Drop one message to fit `new`; False when `new` itself is the one to drop."""
        victim_seq: int | None = None
        victim: _Entry | None = None
        for seq, e in self._outbox.items():  # oldest first: the first of the lowest priority
            if e.mid is None and (victim is None or e.priority < victim.priority):
                victim_seq, victim = seq, e
        if victim is None or victim.priority > new.priority:
            victim_seq, victim = None, new
        if victim_seq is not None:
            del self._outbox[victim_seq]
        if victim.priority is Priority.COMMAND:
            log.error(
                "MQTT: outbox full (%d); dropped command %s %s",
                self.settings.queue_max,
                victim.topic,
                describe_payload(victim.payload),
            )
        else:
            if self._dropped % _DROP_LOG_EVERY == 0:
                log.warning(
                    "MQTT: outbox full (%d, broker unreachable?); dropping oldest %s messages "
                    "(%d dropped so far)",
                    self.settings.queue_max,
                    victim.priority.name.lower(),
                    self._dropped + 1,
                )
            self._dropped += 1
        return victim is not new

    # --------------------------------------------------------------------- sender

    def _run_sender(self) -> None:
        while True:
            self._wake.wait(_TICK_S)
            self._wake.clear()
            with self._changed:
                try:
                    self._pump()
                except Exception:  # keep delivering whatever one bad entry did
                    log.exception("MQTT: sender error")
                self._changed.notify_all()
                if self._stopping and self._closed:
                    return

    def _pump(self) -> None:
        """Match acknowledgements, then hand the next entries to paho (lock held)."""
        while self._acks:
            mid, reason = self._acks.popleft()
            entry = self._inflight.pop(mid, None)
            self._commands_out.pop(mid, None)
            if entry is None:
                continue  # availability messages, or an entry already re-sent
            if getattr(reason, "is_failure", False):  # MQTT 5 only; re-sending will not help
                if entry.retain and not entry.payload:
                    # A ghost entity stays in Home Assistant: the service record keeps the
                    # topic, so the next start (the ACL fixed, say) withdraws it again.
                    self._refused_withdrawals.add(entry.topic)
                    log.error(
                        "MQTT: broker refused to clear %s (%s): Home Assistant keeps that "
                        "entity; check the broker's ACL",
                        entry.topic,
                        reason,
                    )
                else:
                    log.error("MQTT: broker refused message on %s: %s", entry.topic, reason)
            self._remove(entry)
        if self._connect_work:
            self._connect_work = False
            self._enqueue_after_connect()
        if self._discovery_due:
            self._discovery_due = False
            self._enqueue_discovery_locked()
        if not self._connected.is_set() or self._client is None or self._stopping:
            return
        now = time.monotonic()
        while self._withheld:
            # Withheld from paho at the reconnect (_withhold_expired_commands): no
            # acknowledgement will come, and waiting for one held everything back. Only
            # those: one paho did re-send may cross the age limit before its ack arrives.
            e = self._inflight.pop(self._withheld.popleft(), None)
            if e is None:
                continue
            self._commands_out.pop(e.mid or -1, None)
            e.mid = None
            self._drop_if_stale_locked(e, now)
        stale = [e for e in self._inflight.values() if e.generation < self._generation]
        if stale:
            if now - self._connected_at < self.resend_grace_s:
                return  # paho is re-sending them; newer entries must wait to keep order
            log.warning("MQTT: re-sending %d unacknowledged message(s)", len(stale))
            for e in stale:
                self._inflight.pop(e.mid or -1, None)
                self._commands_out.pop(e.mid or -1, None)
                e.mid = None
        self._send_ready()

    def _command_expired(self, e: _Entry, now: float) -> bool:
        max_age = self.settings.command_max_age_s
        return (
            e.priority is Priority.COMMAND and max_age is not None and now - e.queued_at > max_age
        )

    def _drop_if_stale_locked(self, e: _Entry, now: float) -> bool:
        """An unsent command older than command_max_age_s leaves the outbox (said)."""
        if not self._command_expired(e, now):
            return False
        max_age = self.settings.command_max_age_s
        log.warning(
            "MQTT: dropped %s %s, queued %.0f s ago while the broker was "
            "unreachable (older than mqtt.command_max_age_s %g)",
            e.topic,
            describe_payload(e.payload),
            now - e.queued_at,
            max_age,
        )
        self._remove(e)
        return True

    def _send_ready(self) -> None:
        assert self._client is not None
        room = self._window - len(self._inflight)
        now = time.monotonic()
        for e in list(self._outbox.values()):
            if room <= 0:
                return
            if e.mid is not None:
                continue
            if self._drop_if_stale_locked(e, now):
                continue
            try:
                info = self._client.publish(e.topic, e.payload, self.settings.qos, e.retain)
            except ValueError as err:  # invalid topic/payload: it can never succeed
                log.error("MQTT: cannot publish to %r: %s", e.topic, err)
                self._remove(e)
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE or (
                info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.settings.qos == 0
            ):
                return  # not taken by paho; try again on the next wake-up
            # NO_CONN with QoS > 0: paho keeps the message and sends it after reconnecting.
            e.mid = info.mid
            e.generation = self._generation
            self._inflight[info.mid] = e
            if e.priority is Priority.COMMAND:
                self._commands_out[info.mid] = e.queued_at
            room -= 1

    def _remove(self, entry: _Entry) -> None:
        for seq, e in self._outbox.items():
            if e is entry:
                del self._outbox[seq]
                return

    def _enqueue_after_connect(self) -> None:
        """Re-assert retained state in case the broker lost it (lock held)."""
        self._enqueue_discovery_locked()
        if self._away is not None:
            payload = (STATE_ON if self._away else STATE_OFF).encode()
            self._put_locked(self.topics.away_state, payload, Priority.STATE, True, "away")

    def _enqueue_discovery_locked(self) -> None:
        for topic, config in self._discovery:
            self._put_locked(topic, _json(config), Priority.STATE, True, topic)

    def _put_locked(
        self,
        topic: str,
        payload: bytes,
        priority: Priority,
        retain: bool,
        key: str | None,
        *,
        toggle: bool = False,
    ) -> None:
        if key is not None:
            for seq, e in list(self._outbox.items()):
                if e.key == key and e.mid is None:
                    del self._outbox[seq]
        entry = _Entry(topic, payload, retain, priority, key, toggle=toggle)
        if len(self._outbox) >= self.settings.queue_max and not self._make_room(entry):
            return
        self._outbox[next(self._seq)] = entry

    # ------------------------------------------------------------ paho callbacks
    # These run on paho's network thread and must not take self._lock (see module doc).

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        s = self.settings
        if reason.is_failure:
            self._connected.clear()
            # A wrong password is refused on every retry: the journal hears it once (again
            # only if the reason changes), like an unreachable broker.
            text = str(reason)
            if text != self._reported_refusal:
                self._reported_refusal = text
                log.error(
                    "MQTT: broker %s:%d refused the connection: %s; retrying, queued messages "
                    "are kept",
                    s.host,
                    s.port,
                    reason,
                )
            else:
                log.debug("MQTT: refused again: %s", reason)
            self._reread_password(client)
            return
        self._reported_refusal = None
        self._withhold_expired_commands(client)
        # Time first: the sender reads the generation, then the time, without a lock.
        self._connected_at = time.monotonic()
        self._generation += 1
        self._reported_unreachable = False
        if not self.guest:
            client.publish(self.topics.available, ONLINE, s.qos, retain=True)
            subs = [(self.topics.away_set, 1)]
            if s.discovery.enabled:
                subs.append((self.topics.ha_status, 1))
            client.subscribe(subs)
        self._connect_work = True
        self._connected.set()
        self._wake.set()
        log.info("MQTT: connected to %s:%d", s.host, s.port)

    def _withhold_expired_commands(self, client: mqtt.Client) -> None:
        """paho re-sends what it had in flight right after this callback, before the sender
        hears of the reconnect: a command handed over just before the link silently died
        (a broker host's power cut, Wi-Fi gone) would switch the lamp whenever the broker
        is back. Commands older than command_max_age_s leave paho's queue here; the
        outbox then drops them with its warning, like those that never left."""
        max_age = self.settings.command_max_age_s
        if max_age is None:
            return
        now = time.monotonic()
        expired = [mid for mid, t in list(self._commands_out.items()) if now - t > max_age]
        if not expired:
            return
        try:
            # paho has no public way to cancel a message (checked with paho-mqtt 2.2).
            with client._out_message_mutex:
                for mid in expired:
                    if client._out_messages.pop(mid, None) is not None:
                        self._withheld.append(mid)
        except AttributeError:
            log.debug("MQTT: this paho cannot withhold %d expired command(s)", len(expired))

    def _reread_password(self, client: mqtt.Client) -> None:
        """A refused login retries with the password as it is now: a rotated password file
        (or one fixed after a typo) is taken without a restart."""
        if not self.settings.username:
            return
        try:
            client.username_pw_set(self.settings.username, self.settings.password())
        except ValueError as exc:  # SecretError: the file vanished mid-rotation, say
            log.debug("MQTT: cannot read the password again: %s", exc)

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._reported_unreachable:
            self._reported_unreachable = True
            log.warning(
                "MQTT: cannot reach broker %s:%d (connection or TLS handshake failed); "
                "retrying, queued messages are kept",
                self.settings.host,
                self.settings.port,
            )

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        self._wake.set()
        if was_connected and not self._stopping:
            log.warning("MQTT: connection lost (%s); reconnecting", reason)

    def _handle_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        refused = [r for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.error("MQTT: broker refused subscription(s): %s", ", ".join(map(str, refused)))
        else:
            self._subscribed.set()

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._acks.append((mid, reason))
        self._wake.set()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho re-raises exceptions from callbacks, which ends its network thread for good
        # (no more sends, no reconnects): whatever a received message does, it must stop here.
        try:
            self._receive(msg)
        except Exception as e:
            log.warning(
                "MQTT: ignored a received message that could not be handled (%s: %.200s)",
                type(e).__name__,
                e,
            )

    def _receive(self, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("MQTT: ignored message with an invalid topic")
            return
        payload = bytes(msg.payload)
        if topic == self.topics.away_set:
            try:
                command = parse_away(payload, topic, retained=bool(msg.retain))
            except CommandError as e:
                shown = describe_payload(payload)
                log.warning("MQTT: ignored command on %s: %s; payload %s", topic, e, shown)
                return
            kind = " (retained)" if command.retained else ""
            log.info("MQTT: command away=%s from %s%s", command.value, topic, kind)
            if self._on_command is not None:
                try:
                    self._on_command(command)
                except Exception:
                    log.exception("MQTT: on_command handler failed")
        elif topic == self.topics.ha_status and payload.strip().lower() == ONLINE.encode():
            log.info("MQTT: Home Assistant is online; re-sending discovery")
            self._discovery_due = True
            self._wake.set()
