"""The `claudio-daemon calibrate` conversation: pick a microphone, listen, clap, write.

Thin I/O around `claudio_daemon.calibrate.measure`: this module talks to the user, opens
the audio source and writes the file; every number comes from the measurement module.
Phases are counted in samples (the first `noise_seconds` of audio are the background, the
next `clap_seconds` the claps), so a recording passed with `--input` is measured exactly
like the microphone. Instructions and the live level meter go to stderr, the summary to
stdout. Audio is only held in memory and never written anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import typer
import yaml

from claudio_daemon.audio.io import AudioFileError
from claudio_daemon.audio.source import (
    AudioDeviceError,
    FileSource,
    MicSource,
    list_input_devices,
)
from claudio_daemon.calibrate.measure import (
    ClapReport,
    Measurer,
    NoiseReport,
    Proposal,
    propose,
)
from claudio_daemon.calibrate.model import (
    CALIBRATED,
    CalibrationError,
    apply_calibration,
    save_calibration,
)
from claudio_daemon.detect.activity import level_db
from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.rules.schema import RulesFile, default_calibration_path

log = logging.getLogger(__name__)

#: Leading digital silence tolerated before giving up (a muted or dead input).
MAX_SILENT_S = 5.0
#: Once the asked claps are heard, stop after this much audio without a further clap.
QUIET_AFTER_S = 1.5
#: No audio block at all from the microphone for this long (wall clock) ends the run.
STALL_S = 5.0
#: Level meter range (dBFS) and width (characters).
METER_RANGE = (-80.0, 0.0)
METER_WIDTH = 30


class CalibrationFailed(Exception):
    """Calibration could not be done; `code` is the exit status (1: measurement, 2: input)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CalibrateOptions:
    rules: Path | None = None
    device: str | None = None
    input_file: Path | None = None
    yes: bool = False
    out: Path | None = None
    noise_seconds: float = 3.0
    clap_seconds: float = 8.0
    claps: int = 4


@dataclass(frozen=True)
class Result:
    proposal: Proposal
    noise: NoiseReport
    claps: ClapReport
    written: Path | None


class LevelMeter:
    """One status line on a terminal, redrawn in place with a carriage return."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._shown = False

    def show(self, level: float, text: str) -> None:
        if not self.enabled:
            return
        lo, hi = METER_RANGE
        filled = int(round((min(hi, max(lo, level)) - lo) / (hi - lo) * METER_WIDTH))
        bar = "#" * filled + "-" * (METER_WIDTH - filled)
        self.stream.write(f"\r  {level:6.1f} dBFS |{bar}| {text:<34}")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * (METER_WIDTH + 60) + "\r")
            self.stream.flush()
            self._shown = False


class _Watchdog:
    """Closes a microphone that stops delivering audio (MicSource would wait for it forever)."""

    def __init__(self, source: MicSource, stall_s: float) -> None:
        self.source = source
        self.stall_s = stall_s
        self.fired = False
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calibrate-watchdog", daemon=True)

    def start(self) -> None:
        self._last = time.monotonic()
        self._thread.start()

    def fed(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            if time.monotonic() - self._last > self.stall_s:
                self.fired = True
                self.source.close()
                return


# --------------------------------------------------------------------------- set-up


def _load_rules(path: Path | None) -> RulesFile | None:
    """The rules file when there is one; calibrating works without (defaults apply)."""
    from claudio_daemon import app

    try:
        found = app.find_rules(path)
    except app.UserError as exc:
        if path is None and not os.environ.get("CLAUDIO_RULES"):
            log.info("no rules file found: using the default clap settings")
            return None
        raise CalibrationFailed(str(exc), 2) from exc
    try:
        return app.load_rules_or_fail(found)
    except app.UserError as exc:
        raise CalibrationFailed(str(exc), 2) from exc


#: The installed service's StateDirectory= (systemd sets $STATE_DIRECTORY to it there only).
SERVICE_STATE = Path("/var/lib/claudio")


def daemon_reads(rules: RulesFile | None) -> Path | None:
    """The calibration file the daemon will read (None: rules.yaml switched it off).

    rules.yaml's own `audio.calibration` when it names one; else, where the service is
    installed, its state directory: a shell has no $STATE_DIRECTORY, and `sudo claudio-daemon
    calibrate` wrote to root's home, which the service never reads.
    """
    if rules is not None and "calibration" in rules.audio.model_fields_set:
        return rules.audio.calibration
    if not os.environ.get("STATE_DIRECTORY") and _is_dir(SERVICE_STATE):
        return SERVICE_STATE / "calibration.yaml"
    return rules.audio.calibration if rules is not None else default_calibration_path()


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _pick_device(err: TextIO) -> str:
    try:
        devices = list_input_devices()
    except AudioDeviceError as exc:
        raise CalibrationFailed(str(exc), 2) from exc
    if not devices:
        raise CalibrationFailed(
            "no microphones found (is one plugged in, or a sound server running?)", 2
        )
    err.write("Microphones:\n")
    for d in devices:
        mark = "*" if d.is_default else " "
        err.write(f"  {mark} {d.index:>3}  {d.name}  ({d.channels} ch, {d.default_rate:.0f} Hz)\n")
    err.flush()
    default = next((d for d in devices if d.is_default), devices[0])
    return str(typer.prompt("Microphone (number or name)", default=str(default.index))).strip()


# --------------------------------------------------------------------------- measuring


def _measure(
    source: FileSource | MicSource,
    settings: ClapSettings,
    opts: CalibrateOptions,
    err: TextIO,
    meter: LevelMeter,
    where: str,
) -> Measurer:
    sr = source.sample_rate
    noise_n = int(round(opts.noise_seconds * sr))
    clap_n = int(round(opts.clap_seconds * sr))
    quiet_n = int(round(QUIET_AFTER_S * sr))
    max_silent = int(round(MAX_SILENT_S * sr))
    m = Measurer(settings, sr, noise_n)
    watchdog = _Watchdog(source, STALL_S) if isinstance(source, MicSource) else None

    def say(text: str) -> None:
        meter.clear()
        err.write(text + "\n")
        err.flush()

    announced_listening = announced_claps = False
    if watchdog is not None:
        watchdog.start()
    try:
        for block in source.blocks():
            if watchdog is not None:
                watchdog.fed()
            if block.gap_before and announced_listening:
                # Claps either side of the hole would be timed as if adjacent, and the
                # proposal would set the gaps from that.
                gap_s = block.gap_before / sr
                raise CalibrationFailed(
                    f"{where}: audio was lost while measuring"
                    + (f" ({gap_s:.1f} s)" if gap_s >= 0.1 else "")
                    + " (the microphone dropped out, or this machine did not keep up); "
                    "nothing was written: run calibrate again",
                    1,
                )
            if not announced_listening:
                say(f"Listening on {where}.")
                say(f"Measuring the background for {opts.noise_seconds:g} s: please keep quiet.")
                announced_listening = True
            m.push(block.samples)
            level = level_db(block.samples)
            seen = m.samples_seen
            if seen == 0:
                if m.silent_samples > max_silent:
                    raise CalibrationFailed(
                        f"{where} delivers only digital silence: is the microphone muted "
                        "or its gain at zero?",
                        1,
                    )
                meter.show(level, "waiting for sound...")
                continue
            if seen < noise_n:
                left = (noise_n - seen) / sr
                meter.show(level, f"keep quiet, clap in {left:3.1f} s")
                continue
            if not announced_claps:
                say(
                    f"Now clap {opts.claps} times, about half a second apart "
                    f"(listening for up to {opts.clap_seconds:g} s)."
                )
                announced_claps = True
            heard = m.current_claps()
            meter.show(level, f"claps heard: {len(heard)} of {opts.claps}")
            if seen >= noise_n + clap_n:
                break
            if len(heard) >= opts.claps and seen - heard[-1].sample >= quiet_n:
                break
    except AudioDeviceError as exc:
        raise CalibrationFailed(str(exc), 2) from exc
    except AudioFileError as exc:
        raise CalibrationFailed(str(exc), 2) from exc
    finally:
        if watchdog is not None:
            watchdog.stop()
        source.close()
        meter.clear()
    if watchdog is not None and watchdog.fired:
        raise CalibrationFailed(
            f"{where} stopped delivering audio (unplugged, or taken by another program?)", 2
        )
    if m.samples_seen == 0:
        raise CalibrationFailed(f"{where}: no sound at all (only digital silence)", 1)
    m.finish()
    return m


# --------------------------------------------------------------------------- reporting


def _summary(
    noise: NoiseReport,
    claps: ClapReport,
    proposal: Proposal,
    settings: ClapSettings,
    where: str,
) -> str:
    cal = proposal.calibration
    kept = settings.model_fields_set & set(CALIBRATED)
    after = apply_calibration(settings, cal, keep=kept)
    lines = [
        "Measured",
        f"  input               {where}",
        f"  background floor    {noise.floor_db:6.1f} dBFS (high-passed, as the clap detector "
        f"sees it; plain level {noise.raw_level_db:.1f} dBFS)",
        f"  background rises    {noise.upper_db:6.1f} dB above its floor (99.5 % of the time less)",
        f"  claps heard         {claps.count} of {claps.asked}"
        + (f" ({claps.others} other sounds ignored)" if claps.others else ""),
        f"  clap level          {claps.level_db:6.1f} dBFS (softest {claps.quietest_db:.1f}, "
        f"loudest {claps.loudest_db:.1f}), {claps.quietest_db - noise.floor_db:.1f} dB and more "
        "above the background",
        f"  clap sharpness      rise {claps.rise_ms:.1f} ms, decay {claps.decay_ms:.0f} ms, "
        f"shape score {claps.min_score:.2f} or better",
        f"  clap brightness     spectral centroid up to {claps.brightest_hz:.0f} Hz"
        + (
            f" (claps.max_centroid_hz {settings.max_centroid_hz:.0f}: too close, raise it)"
            if settings.max_centroid_hz is not None
            and claps.brightest_hz > 0.8 * settings.max_centroid_hz
            else ""
        ),
        "  clap gaps           "
        + (", ".join(f"{g:.2f}" for g in claps.gaps_s) + " s" if claps.gaps_s else "(one clap)"),
        "Proposed clap settings (now -> calibrated)",
    ]
    for name in CALIBRATED:
        old, new = getattr(settings, name), getattr(after, name)
        why = " (rules.yaml sets it: kept)" if name in kept else ""
        lines.append(f"  {name:<19} {old:6.2f} -> {new:6.2f}{why}")
    lines += [f"  - {note}" for note in proposal.notes]
    return "\n".join(lines)


#: Keys only a rules file has: a file holding one is never overwritten with a calibration.
RULES_KEYS = frozenset({"appliances", "triggers", "mqtt", "away", "claps", "sounds", "audio"})


def _check_target(target: Path) -> None:
    """Before anything is measured: the file to write is not a rules file. `--out
    /etc/claudio/rules.yaml` replaced the user's rules with calibration values. A broken
    calibration is replaced: calibrating again is how it gets fixed."""
    if target.is_dir():
        raise CalibrationFailed(f"{target}: is a folder; --out names the calibration file", 2)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationFailed(f"{target}: cannot read it to check what it is: {exc}", 2) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # not YAML at all: a broken calibration at worst
    if isinstance(data, dict) and RULES_KEYS & set(data):
        raise CalibrationFailed(
            f"{target}: is a rules file ({', '.join(sorted(RULES_KEYS & set(data)))}), not a "
            "calibration; not overwritten: name another file with --out",
            2,
        )


def _no_claps_message(claps: ClapReport, noise: NoiseReport, seconds: float) -> str:
    """Why no claps counted, with advice that fits: after clap-like sounds in the quiet
    phase the claps had to beat those, and "clap louder, check the gain" would mislead."""
    if claps.below_bar:
        return (
            f"no claps heard in the {seconds:.1f} s after the background phase: "
            f"{claps.below_bar} clap-like sound(s) there were no louder than the clap-like "
            f"sound(s) heard during the quiet background phase (claps had to reach "
            f"{noise.clap_bar_db:.1f} dBFS; background floor {noise.floor_db:.1f} dBFS). "
            "Start again and keep quiet until you are prompted to clap, away from ticking or "
            "tapping sounds; nothing was written"
        )
    return (
        f"no claps heard in the {seconds:.1f} s after the background phase "
        f"(loudest sound {claps.peak_dbfs:.1f} dBFS peak, background floor "
        f"{noise.floor_db:.1f} dBFS). Clap closer to the microphone and louder, check that "
        "the right microphone is used (`claudio-daemon devices`) and that its gain is not "
        "too low; nothing was written"
    )


# --------------------------------------------------------------------------- the command


def run_calibration(
    opts: CalibrateOptions,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin_interactive: bool | None = None,
) -> Result:
    """The whole flow; raises CalibrationFailed with an exit status for every failure."""
    out = out or sys.stdout
    err = err or sys.stderr
    interactive = sys.stdin.isatty() if stdin_interactive is None else stdin_interactive
    if opts.claps < 1:
        raise CalibrationFailed(f"--claps must be at least 1, got {opts.claps}", 2)
    if not 1.0 <= opts.noise_seconds <= 60.0:
        raise CalibrationFailed(f"--noise-seconds must be 1-60, got {opts.noise_seconds:g}", 2)
    if not 1.0 <= opts.clap_seconds <= 120.0:
        raise CalibrationFailed(f"--clap-seconds must be 1-120, got {opts.clap_seconds:g}", 2)
    if not opts.yes and not interactive:
        raise CalibrationFailed(
            "not running in a terminal: pass --yes to write the calibration without asking", 2
        )
    rules = _load_rules(opts.rules)
    settings = rules.claps if rules is not None else ClapSettings()
    target = opts.out or daemon_reads(rules) or default_calibration_path()
    _check_target(Path(target))
    sr = FrontEndConfig().sample_rate

    source: FileSource | MicSource
    if opts.input_file is not None:
        try:
            source = FileSource(opts.input_file, sr)
        except AudioFileError as exc:
            raise CalibrationFailed(str(exc), 2) from exc
        where = str(opts.input_file)
        device_name = opts.device or f"file:{opts.input_file.name}"
    else:
        spec: str | int | None = opts.device
        if spec is None and rules is not None:
            spec = rules.audio.device
        if spec is None and not opts.yes:
            spec = _pick_device(err)
        if isinstance(spec, str) and spec.strip().isdigit():
            spec = int(spec.strip())
        block = rules.audio.block_size if rules is not None else 1024
        try:
            source = MicSource(spec, sr, block_size=block)
        except AudioDeviceError as exc:
            raise CalibrationFailed(str(exc), 2) from exc
        device_name = source.device.name
        where = f"[{source.device.index}] {source.device.name}"

    meter = LevelMeter(err, enabled=err.isatty())
    m = _measure(source, settings, opts, err, meter, where)
    noise = m.noise_report()
    claps = m.clap_report(opts.claps)
    clap_time = max(0.0, (m.samples_seen - m.noise_samples) / sr)
    if m.samples_seen < m.noise_samples:
        raise CalibrationFailed(
            f"{where}: the audio ended {m.samples_seen / sr:.1f} s into the "
            f"{opts.noise_seconds:g} s background phase; a recording needs the background "
            "first, then the claps; nothing was written",
            1,
        )
    if claps.count == 0:
        raise CalibrationFailed(_no_claps_message(claps, noise, clap_time), 1)
    try:
        proposal = propose(noise, claps, settings, device=device_name, sample_rate=sr)
    except ValueError as exc:
        raise CalibrationFailed(
            f"{exc}. Clap closer to the microphone and louder; nothing was written", 1
        ) from exc

    out.write(_summary(noise, claps, proposal, settings, where) + "\n")
    out.flush()
    for warning in proposal.warnings:
        err.write(f"warning: {warning}\n")
    err.flush()
    if not opts.yes and not typer.confirm(f"Write the calibration to {target}?", default=True):
        err.write("nothing written\n")
        return Result(proposal, noise, claps, None)
    try:
        save_calibration(proposal.calibration, target)
    except CalibrationError as exc:
        raise CalibrationFailed(str(exc), 2) from exc
    out.write(f"wrote {target}\n")
    used = daemon_reads(rules)
    if used is None:
        out.write(
            "note: rules.yaml sets audio.calibration to null, so the daemon will not read "
            f"this file; set `audio: {{calibration: {target}}}` to use it\n"
        )
    elif Path(used).expanduser().resolve() != Path(target).expanduser().resolve():
        out.write(
            f"note: the daemon reads {used}; set `audio: {{calibration: {target}}}` in "
            "rules.yaml to use this file\n"
        )
    else:
        out.write("restart the daemon to use it (`sudo systemctl restart claudio-daemon`)\n")
    out.flush()
    return Result(proposal, noise, claps, Path(target))
