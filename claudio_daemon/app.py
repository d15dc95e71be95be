"""Small factories that put the daemon together, shared by the CLI, tests and benchmarks.

Each outside service (microphone, broker, systemd) is created here behind one function, so a
test can start the real local thing (a WAV file, Mosquitto, a notify socket) and nothing
else in the daemon knows where its parts came from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from claudio_daemon.audio.io import AudioFileError
from claudio_daemon.audio.source import (
    AudioDeviceError,
    FileSource,
    InputDevice,
    MicSource,
    list_input_devices,
)
from claudio_daemon.calibrate.model import Calibration, CalibrationError, load_calibration
from claudio_daemon.model.classifier import ModelLoadError, OnnxClassifier
from claudio_daemon.model.metadata import ModelMetadataError
from claudio_daemon.mqtt.publisher import MqttPublisher
from claudio_daemon.pipeline import Pipeline
from claudio_daemon.rules.loader import Problem, RulesError, check_labels, load_rules
from claudio_daemon.rules.schema import RulesFile
from claudio_daemon.runner import Runner
from claudio_daemon.service import logs
from claudio_daemon.service.state import StateFile, service_state_dir

log = logging.getLogger(__name__)

#: The shipped model, next to the package in a source checkout or venv install.
SHIPPED_MODEL = "claudio-esc50-se_resnet18.onnx"
MODEL_DIRS = (
    # A source checkout (pip install -e) and the install script's layout, where the
    # virtual environment sits beside models/ (/opt/claudio/.venv, /opt/claudio/models).
    Path(__file__).resolve().parent.parent / "models",
    Path(sys.prefix).resolve().parent / "models",
    # A wheel (pip install claudio-*.whl, pipx): pyproject's data-files put it there.
    Path(sys.prefix) / "share" / "claudio" / "models",
    Path("/usr/share/claudio/models"),
)
RULES_CANDIDATES = (Path("/etc/claudio/rules.yaml"), Path("rules.yaml"))
#: Where scripts/install-service.sh keeps the service's LoadCredential= files.
SERVICE_CREDENTIALS = Path("/etc/claudio/credentials")
#: The service's environment file (systemd's EnvironmentFile=; a shell never reads it).
SERVICE_ENV = Path("/etc/claudio/claudio.env")


class UserError(Exception):
    """Something the user can fix (a path, a device, a file): one line, no traceback."""


def setup_logging(level: str) -> None:
    try:
        logs.setup_logging(level)
    except ValueError as exc:
        prefix = "<3>" if logs.stderr_is_journal() else ""
        print(f"{prefix}error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------------- configuration


def _is_file(path: Path) -> bool:
    """Path.is_file, but a folder we may not enter (/etc/claudio is 0750 root:claudio) is
    the user's to fix, said in one line, not a PermissionError traceback; nor is another
    rules file quietly used instead."""
    try:
        return path.is_file()
    except PermissionError:
        raise UserError(
            f"{path}: permission denied (run with sudo, join the claudio group, or pass "
            "--rules FILE)"
        ) from None


def _no_rules_file(path: Path) -> UserError:
    if path.is_dir():
        return UserError(
            f"{path}: a folder, not a rules file (name the file, e.g. {path / 'rules.yaml'})"
        )
    return UserError(f"{path}: rules file not found")


def find_rules(path: Path | None) -> Path:
    if path is not None:
        if not _is_file(path):
            raise _no_rules_file(path)
        return path
    env = os.environ.get("CLAUDIO_RULES")
    if env:
        return find_rules(Path(env))
    for candidate in RULES_CANDIDATES:
        if _is_file(candidate):
            return candidate
    raise UserError(
        "no rules file: pass --rules FILE, set CLAUDIO_RULES, or create "
        "/etc/claudio/rules.yaml (start from the repository's rules.yaml)"
    )


def shipped_model() -> Path | None:
    env = os.environ.get("CLAUDIO_MODEL")
    if env:
        return Path(env)
    for folder in MODEL_DIRS:
        candidate = folder / SHIPPED_MODEL
        if candidate.is_file():
            return candidate
    return None


def load_classifier(rules: RulesFile | None, override: Path | None) -> OnnxClassifier | None:
    """The model named on the command line, in rules.yaml, or shipped; None when there is
    none at all (claps still work; sound rules cannot)."""
    path = override or (rules.model.path if rules is not None else None) or shipped_model()
    if path is None:
        log.warning(
            "no sound model found (looked in %s): clap detection only",
            ", ".join(str(d) for d in MODEL_DIRS),
        )
        return None
    device = rules.model.device if rules is not None else "auto"
    threads = rules.model.threads if rules is not None else 1
    try:
        return OnnxClassifier(path, device=device, threads=threads)
    except (ModelLoadError, ModelMetadataError, OSError) as exc:
        raise UserError(str(exc)) from exc


def require_labels(rules: RulesFile, path: Path, labels: tuple[str, ...] | None) -> RulesFile:
    """The rules, if every sound label they name is one of the model's."""
    if labels is not None:
        problems: list[Problem] = check_labels(rules, labels)
        if problems:
            raise RulesError(path, problems)
    return rules


def load_checked_rules(path: Path, labels: tuple[str, ...] | None) -> RulesFile:
    """Parse, validate, and check every sound label against the model."""
    return require_labels(load_rules(path), path, labels)


def load_rules_or_fail(path: Path, labels: tuple[str, ...] | None = None) -> RulesFile:
    try:
        return load_checked_rules(path, labels)
    except RulesError as exc:
        raise UserError(str(exc)) from exc


def load_calibration_for(rules: RulesFile) -> Calibration | None:
    path = rules.audio.calibration
    if path is None or not path.is_file():
        if path is not None:
            log.info(
                "no calibration at %s: built-in clap thresholds apply "
                "(run `claudio-daemon calibrate`)",
                path,
            )
        return None
    try:
        cal = load_calibration(path)
    except CalibrationError as exc:
        raise UserError(str(exc)) from exc
    log.info("calibration from %s: noise floor %.1f dB", path, cal.noise_floor_db)
    return cal


def check_rules(path: Path, model: Path | None) -> tuple[list[str], str]:
    """Problems as printable lines (empty: fine), and a one-line summary."""
    if not _is_file(path):
        raise _no_rules_file(path)
    try:
        rules = load_rules(path)
    except RulesError as exc:
        return exc.lines(), ""
    classifier = load_classifier(rules, model)
    labels = classifier.labels if classifier is not None else None
    problems = check_labels(rules, labels) if labels is not None else []
    summary = f"{len(rules.triggers)} triggers, {len(rules.appliances)} appliances"
    if classifier is not None:
        summary += f"; model {classifier.metadata.model_name} with {len(labels or ())} labels"
    else:
        summary += "; no model to check sound labels against"
    return [p.format(path) for p in problems], summary


# ---------------------------------------------------------------------- assembly


@dataclass
class Assembly:
    rules: RulesFile
    classifier: OnnxClassifier | None
    pipeline: Pipeline


def assemble(
    rules_path: Path,
    model_path: Path | None,
    *,
    use_classifier: bool = True,
    starts_at: datetime | None = None,
) -> Assembly:
    """The daemon's parts; `starts_at`: the time of day the audio begins at (a replay),
    else `when` windows follow the wall clock."""
    try:
        rules = load_rules(rules_path)
        classifier = load_classifier(rules, model_path) if use_classifier else None
        require_labels(rules, rules_path, classifier.labels if classifier else None)
    except RulesError as exc:
        raise UserError(str(exc)) from exc
    pipeline = Pipeline(
        rules, classifier, calibration=load_calibration_for(rules), starts_at=starts_at
    )
    return Assembly(rules, classifier, pipeline)


def make_publisher(
    rules: RulesFile,
    runner: Runner,
    classifier: OnnxClassifier | None,
    announced: StateFile | None = None,
) -> MqttPublisher:

    publisher = MqttPublisher(
        rules.mqtt, on_command=runner.on_command, sample_rate=runner.pipeline.sample_rate
    )
    announce(publisher, rules, classifier, announced)
    return publisher


def announce(
    publisher: MqttPublisher,
    rules: RulesFile,
    classifier: OnnxClassifier | None,
    announced: StateFile | None = None,
) -> None:
    """Home Assistant discovery for what these rules can send: a disabled clap rule sends
    nothing, so it is not announced.

    `announced` keeps the topics the service announced last time: what is not announced
    now (a changed client_id or node_id, discovery turned off, a rule removed while the
    daemon was stopped) is withdrawn, or Home Assistant would keep a ghost device.
    """
    publisher.configure_discovery(
        clap_counts=sorted({t.claps for t in rules.triggers if t.enabled and t.claps is not None}),
        sound_labels=list(classifier.labels) if classifier is not None else [],
    )
    if announced is None:
        return
    before = announced.read()
    old: list[str] = []
    if isinstance(before, list) and all(isinstance(t, str) for t in before):
        # Only what can have been ours: a damaged file must not clear other retained topics.
        old = [t for t in before if t.endswith("/config")]
        publisher.withdraw_discovery(old)
    elif before is not None:
        announced.unreadable("not a list of topics")
    # The old topics stay on record until the broker has taken their withdrawal
    # (`settle_announced`): a run that never reaches it leaves them to the next one.
    now = publisher.discovery_topics
    announced.write([*(t for t in old if t not in now), *now])


def settle_announced(publisher: MqttPublisher, announced: StateFile | None) -> None:
    """After everything queued reached the broker: what is announced now is ours, and so
    is what the broker refused to let us withdraw (the next start tries again)."""
    if announced is not None:
        announced.write([*publisher.refused_withdrawals, *publisher.discovery_topics])


def announced_topics_file() -> StateFile | None:
    """The service's record of its Home Assistant discovery topics (systemd only)."""
    folder = service_state_dir()
    return StateFile(folder / "discovery.json", "discovery topics") if folder else None


def start_publisher(publisher: MqttPublisher) -> None:
    """Connects in the background; a missing or unreadable secret or TLS file is the user's
    to fix, told in one line (a traceback would show the file's bytes in the journal)."""
    try:
        publisher.start()
    except ValueError as exc:
        raise UserError(str(exc)) from None


#: Sections a reload cannot apply: the broker connection, the model and the microphone
#: are opened once, at start-up. Settings read afresh on every block are left out.
RESTART_SECTIONS = ("mqtt", "model", "audio")
LIVE_SETTINGS = {"model": {"classify_every_s"}}


def restart_needed(old: RulesFile, new: RulesFile) -> list[str]:
    """The sections of an accepted edit that take effect only at the next start."""
    out = []
    for name in RESTART_SECTIONS:
        live = LIVE_SETTINGS.get(name, set())
        if getattr(old, name).model_dump(exclude=live) != getattr(new, name).model_dump(
            exclude=live
        ):
            out.append(name)
    return out


def reload_applier(
    pipeline: Pipeline,
    publisher: MqttPublisher,
    classifier: OnnxClassifier | None,
    rules: RulesFile,
    announced: StateFile | None = None,
) -> Callable[[RulesFile], None]:
    """What a reload does with a good file: new rules for the pipeline, Home Assistant
    told about new clap patterns, and a warning for what needs a restart: measured against
    what runs (the file at start-up), so an edit undone needs none."""
    running = rules
    pending: list[str] = []

    def apply(new: RulesFile) -> None:
        nonlocal pending
        pipeline.replace_rules(new)
        announce(publisher, new, classifier, announced)
        later = restart_needed(running, new)
        if later:
            log.warning(
                "changes to %s take effect at the next restart (systemctl restart claudio-daemon)",
                ", ".join(f"{name}:" for name in later),
            )
        elif pending:
            log.info("%s as running again: no restart needed", ", ".join(f"{n}:" for n in pending))
        pending = later

    return apply


def run_replay(
    file: Path,
    *,
    rules_path: Path,
    model_path: Path | None,
    json_out: TextIO | None,
    json_levels: bool = False,
    text_out: TextIO | None = None,
    realtime: bool = False,
    publish: bool = False,
    use_classifier: bool = True,
    starts_at: datetime | None = None,
) -> Runner:
    """`starts_at`: the time of day the recording begins at (default: now); `when`
    windows then follow the recording's own time, as fast as it is replayed."""
    parts = assemble(
        rules_path,
        model_path,
        use_classifier=use_classifier,
        starts_at=starts_at or datetime.now(),
    )
    runner = Runner(parts.pipeline, json_out=json_out, json_levels=json_levels, text_out=text_out)
    try:
        # The live block size, as the sound card cuts the audio (the pipeline's results
        # do not depend on it; log and JSON timings of a block's events then match too).
        source = FileSource(
            file,
            parts.pipeline.sample_rate,
            block_size=parts.rules.audio.block_size,
            realtime=realtime,
        )
    except AudioFileError as exc:
        raise UserError(str(exc)) from exc
    publisher = None
    if publish:
        # A guest beside the running service: its own client id, no availability, AWAY
        # state, discovery or commands (see MqttPublisher's `guest`).
        publisher = MqttPublisher(
            parts.rules.mqtt, sample_rate=parts.pipeline.sample_rate, guest=True
        )
        announce(publisher, parts.rules, parts.classifier)  # the clap counts HA knows
        runner.publisher = publisher
        start_publisher(publisher)
    delivered = True
    try:
        if parts.rules.away.armed:
            runner.set_away(True, "rules.yaml")
        try:
            runner.run(source)
        except AudioFileError as exc:  # a file cut short decodes until it breaks
            raise UserError(str(exc)) from exc
    finally:
        if publisher is not None:
            delivered = publisher.stop() is not False
    if not delivered:
        # A replay asked to switch things and did not: a script must not read success.
        m = parts.rules.mqtt
        raise UserError(f"--publish: messages left undelivered to the broker at {m.host}:{m.port}")
    return runner


def run_service(
    *,
    rules_path: Path,
    model_path: Path | None,
    device: str | None,
    input_file: Path | None,
    json_out: TextIO | None,
    wait_for_device: bool | None = None,
) -> int:
    """The daemon: listen until SIGTERM, then flush MQTT and say offline.

    `wait_for_device` None: wait for a missing microphone when systemd started us (a USB
    one plugged in after boot; five quick failures would stop the unit for good), fail at
    once in a terminal, where a person (or the quick start's fallback to the demo) wants
    to hear it now.
    """
    from claudio_daemon.service.notify import SystemdNotifier
    from claudio_daemon.service.reload import FileWatcher, Reloader
    from claudio_daemon.service.signals import install_handlers

    # Watch before the first load, so an edit made while we start up is not missed.
    watcher = FileWatcher(rules_path)
    parts = assemble(rules_path, model_path)
    labels = parts.classifier.labels if parts.classifier is not None else None
    notifier = SystemdNotifier.from_env()
    runner = Runner(parts.pipeline, json_out=json_out, notifier=notifier)
    announced = announced_topics_file()
    publisher = make_publisher(parts.rules, runner, parts.classifier, announced)
    runner.publisher = publisher
    reloader = Reloader(
        rules_path,
        load=lambda p: load_checked_rules(p, labels),
        apply=reload_applier(parts.pipeline, publisher, parts.classifier, parts.rules, announced),
        notifier=notifier,
        watcher=watcher,
    )
    runner.housekeeping = reloader.check
    runner.status_note = lambda: (
        f"last edit of {rules_path.name} rejected: {reloader.last_error}"
        if reloader.last_error
        else None
    )
    restore = install_handlers(on_stop=runner.stop, on_reload=reloader.request)
    sr = parts.pipeline.sample_rate
    spec: str | int | None = device if device is not None else parts.rules.audio.device
    if isinstance(spec, str) and spec.isdigit():
        spec = int(spec)
    try:
        if input_file is not None:
            source: FileSource | MicSource = FileSource(
                input_file, sr, block_size=parts.rules.audio.block_size, realtime=True
            )
            where = str(input_file)
        else:
            wait = notifier.enabled if wait_for_device is None else wait_for_device
            source = MicSource(
                spec, sr, block_size=parts.rules.audio.block_size, wait_for_device=wait
            )
            mic = source

            def heartbeat() -> None:
                notifier.watchdog()
                if mic.waiting:
                    runner.idle()

            source.heartbeat = heartbeat
            where = f"microphone {spec if spec is not None else '(default)'}"
            source.on_waiting = lambda why: notifier.ready(f"waiting for {where}: {why}")
    except (AudioDeviceError, AudioFileError) as exc:
        restore()
        raise UserError(str(exc)) from exc
    try:
        start_publisher(publisher)
    except UserError:
        restore()
        raise
    start_away(runner, publisher, parts.rules.away.armed)

    def listening() -> None:
        log.info(
            "listening on %s (%d triggers, model %s)",
            where,
            len(parts.rules.triggers),
            parts.classifier.metadata.model_name if parts.classifier else "none",
        )
        notifier.ready(f"listening on {where}")

    runner.on_listening = listening
    try:
        runner.run(source)
    except (AudioDeviceError, AudioFileError) as exc:
        raise UserError(str(exc)) from exc
    finally:
        notifier.stopping()
        source.close()
        flushed = publisher.stop()
        if flushed is not False:
            settle_announced(publisher, announced)
        restore()
        log.info("stopped%s", "" if flushed is not False else " (some MQTT messages undelivered)")
    return 0


def start_away(runner: Runner, publisher: MqttPublisher, rules_armed: bool) -> None:
    """AWAY as the service last had it (under systemd), else as rules.yaml says; from
    here on every change is saved, so a restart does not disarm a house left armed."""
    from claudio_daemon.service.away_state import AwayStore, service_state_path, starting_state

    path = service_state_path()
    store = AwayStore(path) if path is not None else None
    armed, why = starting_state(rules_armed, store.load() if store is not None else None)
    restored = why != "rules.yaml"
    if restored:
        log.info("AWAY %s (%s)", "armed" if armed else "disarmed", why)
    if armed or rules_armed:
        # The engine was built from rules.yaml: a restored "disarmed" must reach it too,
        # not only Home Assistant.
        runner.set_away(armed, "restored" if restored else why)
    else:
        publisher.publish_away_state(False)
    if store is not None:
        runner.on_away_change = lambda change: store.save(
            change.away, change.source, runner.pipeline.rules.away.armed
        )


def input_devices() -> list[InputDevice]:
    try:
        return list_input_devices()
    except AudioDeviceError as exc:
        raise UserError(str(exc)) from exc


#: How long `away on/off` waits for the daemon to report the new state.
AWAY_CONFIRM_S = 5.0


def _password_hint(rules: RulesFile, armed: bool) -> str:
    """What to do when the CLI cannot get the password the service uses."""
    if rules.mqtt.password_env:
        verb = "on" if armed else "off"
        return (
            f"the service gets ${rules.mqtt.password_env} from {SERVICE_ENV}, which a shell "
            f"does not read: sudo sh -c 'set -a; . {SERVICE_ENV}; exec claudio-daemon away "
            f"{verb}'"
        )
    if os.geteuid() != 0:
        return f"the service's credentials in {SERVICE_CREDENTIALS} need root: run it with sudo"
    return f"the service's credential is read from {SERVICE_CREDENTIALS}"


def send_away(rules_path: Path, armed: bool) -> str:
    """Publish an AWAY command and wait for the running daemon to report the new state;
    returns the topic. UserError when no daemon answered: the broker takes a command
    whether or not anyone listens, and "sent" must not read as "the house is armed"."""
    from claudio_daemon.mqtt.publisher import Confirm, publish_once
    from claudio_daemon.mqtt.topics import ONLINE, STATE_OFF, STATE_ON, Topics
    from claudio_daemon.rules.secrets import SecretError

    rules = load_rules_or_fail(rules_path)
    topics = Topics(rules.mqtt.topic_prefix)
    state = STATE_ON if armed else STATE_OFF
    if not os.environ.get("CREDENTIALS_DIRECTORY"):
        # The service's password file is named as ${CREDENTIALS_DIRECTORY}/..., which only
        # systemd sets; from a shell, the install script's folder is where it comes from.
        with contextlib.suppress(OSError):
            if SERVICE_CREDENTIALS.is_dir():
                os.environ["CREDENTIALS_DIRECTORY"] = str(SERVICE_CREDENTIALS)
    confirm = Confirm(topics.away_state, state.encode(), topics.available, AWAY_CONFIRM_S)
    try:
        answer = publish_once(rules.mqtt, topics.away_set, state, confirm=confirm)
    except SecretError as exc:
        hint = _password_hint(rules, armed)
        raise UserError(f"cannot read the MQTT password: {exc} ({hint})") from None
    except (OSError, ValueError, TimeoutError) as exc:
        raise UserError(
            f"could not reach the MQTT broker at {rules.mqtt.host}:{rules.mqtt.port}: {exc}"
        ) from exc
    if answer is not None and not answer.confirmed and answer.available == ONLINE:
        # A daemon that is up answers within a second. Mosquitto neither refuses a
        # subscription its ACL denies nor an unauthorised publish (MQTT 3.1.1): both are
        # silent, and "is it running?" would send the user to look in the wrong place.
        who = f"user '{rules.mqtt.username}'" if rules.mqtt.username else "anonymous clients"
        raise UserError(
            f"sent to {topics.away_set}, but no answer came within {AWAY_CONFIRM_S:g} s "
            f"although the daemon is online (it says so on {topics.available}): the broker "
            f"may not let {who} publish to {topics.away_set} or read {topics.away_state}; "
            "check its ACL (the command may have been applied)"
        )
    if answer is None or not answer.confirmed:
        said = (
            f"it last said '{answer.available}' on {topics.available}"
            if answer is not None and answer.available
            else f"nothing on {topics.available}"
        )
        raise UserError(
            f"sent to {topics.away_set}, but no daemon confirmed it within "
            f"{AWAY_CONFIRM_S:g} s ({said}): is claudio-daemon running with topic_prefix "
            f"'{rules.mqtt.topic_prefix}' on {rules.mqtt.host}:{rules.mqtt.port}?"
        )
    return topics.away_set
