"""Where audio comes from: a file (replays, demos) or a microphone (the service).

Every source hands out fixed-size blocks of float32 mono audio at the model's rate with
the sample index of their first sample, so everything downstream counts time in samples
and a replayed file behaves exactly like a live run.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from claudio_daemon.audio.io import AudioFileError
from claudio_daemon.audio.resample import StreamingResampler

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 1024


class AudioDeviceError(RuntimeError):
    """The audio input device is missing, busy or unusable; the message lists the inputs."""


@dataclass(frozen=True)
class AudioBlock:
    #: float32 mono at the source's target rate.
    samples: np.ndarray
    #: Index of samples[0], in target-rate samples from the start of the stream.
    start_sample: int
    #: Audio lost just before this block (target-rate samples, already counted in
    #: `start_sample`): the source dropped it, or the device was away. What came before
    #: does not continue into this block, so nothing may be timed across the two.
    gap_before: int = 0

    @property
    def end_sample(self) -> int:
        return self.start_sample + int(self.samples.size)


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: float
    is_default: bool


class AudioSource(Protocol):
    sample_rate: int
    native_rate: int

    @property
    def overflows(self) -> int: ...

    def blocks(self) -> Iterator[AudioBlock]: ...

    def close(self) -> None: ...


class _Reblocker:
    """Turns a stream of arbitrary-length arrays into exact `block_size` blocks."""

    def __init__(self, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self._buf = np.zeros(block_size, dtype=np.float32)
        self._fill = 0
        self.next_start = 0
        self._gap = 0

    def push(self, x: np.ndarray) -> Iterator[AudioBlock]:
        pos = 0
        while pos < x.size:
            take = min(self.block_size - self._fill, x.size - pos)
            self._buf[self._fill : self._fill + take] = x[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.block_size:
                yield self._emit()

    @property
    def filled(self) -> int:
        """Samples collected towards the next block."""
        return self._fill

    def rest(self) -> AudioBlock | None:
        return self._emit() if self._fill else None

    def skip(self, n: int) -> Iterator[AudioBlock]:
        """`n` samples are missing here: what was collected goes out as a short block, and
        the next block starts `n` samples later, saying so in its `gap_before`."""
        last = self.rest()
        if last is not None:
            yield last
        self.next_start += n
        self._gap += n

    def _emit(self) -> AudioBlock:
        block = AudioBlock(self._buf[: self._fill].copy(), self.next_start, self._gap)
        self.next_start += self._fill
        self._fill = 0
        self._gap = 0
        return block


class FileSource:
    """A recording played through the pipeline, block by block.

    The file is decoded in fixed native-rate chunks (independent of block_size) and
    resampled as a stream, so the audio is the same whatever block size is asked for.
    The last block is shorter when the file does not divide evenly; nothing is padded.
    `realtime=True` paces blocks to the clock, for demos that should feel live.
    """

    _READ_CHUNK = 8192

    def __init__(
        self,
        path: str | Path,
        target_rate: int,
        block_size: int = DEFAULT_BLOCK,
        realtime: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise AudioFileError(self.path, "file not found")
        if self.path.stat().st_size == 0:
            raise AudioFileError(self.path, "file is empty (0 bytes)")
        try:
            with sf.SoundFile(str(self.path)) as f:
                self.native_rate = int(f.samplerate)
                frames = f.frames
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioFileError(self.path, f"cannot decode audio ({exc})") from exc
        if frames == 0:
            raise AudioFileError(self.path, "recording has no samples")
        self.sample_rate = int(target_rate)
        self.block_size = int(block_size)
        self.realtime = realtime
        self._closed = threading.Event()
        _Reblocker(self.block_size)  # validates block_size now, not at first use

    @property
    def overflows(self) -> int:
        return 0

    def close(self) -> None:
        self._closed.set()

    def _chunks(self) -> Iterator[np.ndarray]:
        resampler = StreamingResampler(self.native_rate, self.sample_rate)
        try:
            with sf.SoundFile(str(self.path)) as f:
                for data in f.blocks(blocksize=self._READ_CHUNK, dtype="float32", always_2d=True):
                    if self._closed.is_set():
                        return
                    yield resampler.process(data.mean(axis=1, dtype=np.float32))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioFileError(self.path, f"cannot decode audio ({exc})") from exc
        yield resampler.flush()

    def blocks(self) -> Iterator[AudioBlock]:
        reblock = _Reblocker(self.block_size)
        t0 = time.monotonic()

        def pace(block: AudioBlock) -> None:
            if self.realtime:
                due = t0 + block.end_sample / self.sample_rate
                self._closed.wait(max(0.0, due - time.monotonic()))

        for chunk in self._chunks():
            for block in reblock.push(chunk):
                if self._closed.is_set():
                    return
                pace(block)
                yield block
        last = reblock.rest()
        if last is not None and not self._closed.is_set():
            pace(last)
            yield last


def _sd() -> Any:
    """sounddevice, imported on first use: it needs PortAudio, which file replays do not."""
    try:
        import sounddevice
    except OSError as exc:  # PortAudio library missing
        raise AudioDeviceError(
            f"PortAudio is not available ({exc}); install libportaudio2"
        ) from exc
    return sounddevice


def refresh_devices() -> None:
    """Make PortAudio enumerate devices again (it lists them once, at start-up).

    Needed to see a USB microphone plugged in again, or a sound server started after us.
    Only safe while this process has no open stream.
    """
    sd = _sd()
    with contextlib.suppress(AttributeError):
        sd._terminate()
        sd._initialize()


def list_input_devices() -> list[InputDevice]:
    """Every device with at least one input channel, as PortAudio sees it."""
    sd = _sd()
    try:
        default_in = sd.default.device[0]
        if default_in is None or default_in < 0:
            default_in = sd.query_devices(kind="input")["index"]
    except Exception:  # no default input at all
        default_in = -1
    out = []
    for info in sd.query_devices():
        if info["max_input_channels"] > 0:
            out.append(
                InputDevice(
                    index=int(info["index"]),
                    name=str(info["name"]),
                    channels=int(info["max_input_channels"]),
                    default_rate=float(info["default_samplerate"]),
                    is_default=int(info["index"]) == default_in,
                )
            )
    return out


def _describe_inputs() -> str:
    try:
        devices = list_input_devices()
    except Exception as exc:
        return f"(cannot list devices: {exc})"
    if not devices:
        return "no input devices found (is a microphone or sound server available?)"
    return "available inputs: " + "; ".join(
        f"[{d.index}] {d.name!r}{' (default)' if d.is_default else ''}" for d in devices
    )


def resolve_input_device(device: str | int | None) -> InputDevice:
    """A device by index, by case-insensitive name substring, or the default input."""
    devices = list_input_devices()
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device.strip())
    if device is None:
        for d in devices:
            if d.is_default:
                return d
        if devices:
            return devices[0]
        raise AudioDeviceError(f"no default audio input; {_describe_inputs()}")
    if isinstance(device, int):
        for d in devices:
            if d.index == device:
                return d
        raise AudioDeviceError(f"audio input device #{device} not found; {_describe_inputs()}")
    wanted = device.lower()
    exact = [d for d in devices if d.name.lower() == wanted]
    matches = exact or [d for d in devices if wanted in d.name.lower()]
    if not matches:
        raise AudioDeviceError(f"no audio input matches {device!r}; {_describe_inputs()}")
    if len(matches) > 1:
        log.info("input %r matches %d devices, using %r", device, len(matches), matches[0].name)
    return matches[0]


def resolve_again(spec: str | int | None, last: InputDevice) -> InputDevice:
    """The device to reopen after it vanished. Asked for by index, it is found again by the
    name it had, and only by it: a USB microphone plugged back in often comes back under
    another PortAudio index, and while it is away its old index may be another device. By
    name (or the default), as asked."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        same = [d for d in list_input_devices() if d.name == last.name]
        if not same:
            # Not back yet. Its old index may now be the next device along: opening that
            # one would swap microphones for good. Keep waiting for this one.
            raise AudioDeviceError(f"audio input {last.name!r} (asked for as #{spec}) is not back")
        return min(same, key=lambda d: abs(d.index - last.index))
    return resolve_input_device(spec)


class Backoff:
    """How long to wait before the next attempt to reopen the microphone.

    The delay doubles with every attempt, also with attempts that open a stream which then
    dies at once or never delivers: a device that keeps failing that way would otherwise
    be reopened (and logged) a few times a second for ever. Only audio that has flowed for
    `healthy_s` shows the device is back, and brings the delay back to its start.
    """

    def __init__(self, first_s: float, cap_s: float, healthy_s: float) -> None:
        if not 0 < first_s <= cap_s:
            raise ValueError(f"reopen back-off needs 0 < first <= cap, got {first_s}, {cap_s}")
        self.first_s = first_s
        self.cap_s = cap_s
        self.healthy_s = healthy_s
        self._delay = first_s

    @property
    def delay_s(self) -> float:
        """The wait before the next attempt."""
        return self._delay

    def failed(self) -> None:
        """An attempt is used up (failed to open, or opened and then failed)."""
        self._delay = min(self.cap_s, self._delay * 2)

    def flowing(self, seconds: float) -> None:
        """Audio has arrived for `seconds` since the last (re)open."""
        if seconds >= self.healthy_s:
            self._delay = self.first_s


class MicSource:
    """A live input device, kept alive through device errors.

    PortAudio's callback only copies the block into a bounded queue (never blocks, never
    allocates beyond the copy); when the consumer falls behind the newest audio is dropped
    and counted in `overflows`, as are the driver's own input overflows.

    If the stream fails (PortAudio error, the stream finishing by itself, or no audio for
    `stall_s`), it is closed and reopened with exponential backoff (`Backoff`), re-resolving
    the device by name so a re-plugged USB microphone is found again. With `wait_for_device`
    a microphone that is missing or busy at start-up is waited for the same way (the
    service: a USB microphone plugged in after boot), and `on_waiting` hears why, once.
    Sample indices count time, not only the audio received. Audio dropped because the
    consumer fell behind is counted exactly (in device frames); a reopen counts the time the
    device was away; an overflow in the driver only marks where audio is missing. The block
    after a hole says how much is missing (`gap_before`) and is not filled with silence:
    silence would read as a sudden quiet room, and two claps either side of a hole would
    look closer together than they were.
    """

    def __init__(
        self,
        device: str | int | None,
        target_rate: int,
        block_size: int = DEFAULT_BLOCK,
        native_rate: int | None = None,
        queue_blocks: int = 64,
        reopen_backoff: tuple[float, float] = (0.5, 30.0),
        stall_s: float = 3.0,
        latency: float = 0.1,
        wait_for_device: bool = False,
        healthy_s: float = 60.0,
    ) -> None:
        self.device_spec = device
        self.sample_rate = int(target_rate)
        self.block_size = int(block_size)
        _Reblocker(self.block_size)  # validates block_size now, not at first use
        self._fixed_rate = int(native_rate) if native_rate else None
        self._wait = wait_for_device
        #: Why the device could not be found at start-up (only with wait_for_device).
        self._missing: str | None = None
        try:
            self.device = resolve_input_device(device)
        except AudioDeviceError as exc:
            if not wait_for_device:
                raise
            self._missing = str(exc)
            name = str(device) if device is not None else "(default)"
            self.device = InputDevice(-1, name, 1, 0.0, False)
        rate = self._fixed_rate or int(round(self.device.default_rate))
        self.native_rate = rate or self.sample_rate
        #: (audio, frames dropped before it since the start): the callback's only writer
        #: of `_dropped_frames`, so the consumer learns where each hole is.
        self._queue: queue.Queue[tuple[np.ndarray, int]] = queue.Queue(maxsize=queue_blocks)
        self._dropped_frames = 0
        self._backoff = Backoff(reopen_backoff[0], reopen_backoff[1], healthy_s)
        self._stall_s = stall_s
        # A fixed 100 ms: PortAudio's "low" starves ALSA's pulse plugin (audio arrives in
        # bursts seconds late) and "high" may deliver nothing; claps need sample-accurate
        # timing, not low latency, and 100 ms is well within the rules' reaction time.
        self._latency = latency
        self._closed = threading.Event()
        self._stream_ended = threading.Event()
        self._overflows = 0
        self.reopens = 0
        #: Called while waiting for audio or for a device to come back, so the service
        #: watchdog knows the loop is alive (a lost microphone is retried, not fatal).
        self.heartbeat: Callable[[], object] | None = None
        #: True while no stream is open (between a failure and the reopen that works).
        self.waiting = False
        #: Called once, with the reason, when blocks() starts waiting for a device that is
        #: missing or busy at start-up (wait_for_device), so the service can say so.
        self.on_waiting: Callable[[str], object] | None = None

    @property
    def overflows(self) -> int:
        return self._overflows

    def close(self) -> None:
        """Ends blocks() within a fraction of a second; safe from a signal handler."""
        self._closed.set()

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status and status.input_overflow:
            # The driver lost audio before this chunk; how much it does not say. A frame
            # marks the hole, so no clap pattern is counted across it (the clock loses the
            # rest, as before).
            self._overflows += 1
            self._dropped_frames += 1
        # Channels are averaged, as files are (and the training clips were): a device that
        # only opens in stereo and has a dead left channel must not leave us deaf.
        if indata.shape[1] == 1:
            mono = indata[:, 0].copy()
        else:
            mono = indata.mean(axis=1, dtype=np.float32)
        try:
            self._queue.put_nowait((mono, self._dropped_frames))
        except queue.Full:
            self._overflows += 1
            self._dropped_frames += frames

    def _open(self) -> Any:
        sd = _sd()
        self._stream_ended.clear()
        # Mono if the device allows it; some only open with all their channels, and then
        # the callback averages them.
        channel_options = [1] + ([self.device.channels] if self.device.channels > 1 else [])
        for i, channels in enumerate(channel_options):
            try:
                stream = sd.InputStream(
                    device=self.device.index,
                    channels=channels,
                    samplerate=self.native_rate,
                    dtype="float32",
                    blocksize=0,
                    latency=self._latency,
                    callback=self._callback,
                    finished_callback=self._stream_ended.set,
                )
            except sd.PortAudioError:
                if i == len(channel_options) - 1:
                    raise
                continue
            try:
                stream.start()
            except Exception:
                stream.close(ignore_errors=True)
                raise
            break
        log.info(
            "listening on [%d] %r at %d Hz (model rate %d Hz)",
            self.device.index,
            self.device.name,
            self.native_rate,
            self.sample_rate,
        )
        return stream

    def _reopen(self) -> Any | None:
        """Retry until a stream opens or close() is called; None when closed."""
        self.waiting = True
        try:
            return self._retry()
        finally:
            self.waiting = False

    def _retry(self) -> Any | None:
        failures = 0
        while not self._closed.is_set():
            deadline = time.monotonic() + self._backoff.delay_s
            self._backoff.failed()
            while time.monotonic() < deadline:
                self._beat()
                if self._closed.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                    return None
            try:
                refresh_devices()
                self.device = resolve_again(self.device_spec, self.device)
                if self._fixed_rate is None:
                    # A re-plugged (or another) device may run at another rate.
                    self.native_rate = int(round(self.device.default_rate))
                stream = self._open()
                self.reopens += 1
                return stream
            except Exception as exc:
                # Every attempt at first, then one in ten: a microphone left unplugged for
                # a week is not 2,880 journal lines a day.
                failures += 1
                level = logging.WARNING if failures <= 5 or failures % 10 == 0 else logging.DEBUG
                log.log(
                    level,
                    "audio input still unavailable (%s); retrying in %.1f s (attempt %d)",
                    exc,
                    self._backoff.delay_s,
                    failures,
                )
        return None

    def _first_stream(self) -> Any | None:
        """The stream at start-up: an error, or with wait_for_device a wait (None: closed)."""
        sd = _sd()
        reason = self._missing
        if reason is None:
            try:
                return self._open()
            except sd.PortAudioError as exc:
                reason = (
                    f"cannot open audio input [{self.device.index}] {self.device.name!r} at "
                    f"{self.native_rate} Hz (busy or unsupported?): {exc}; {_describe_inputs()}"
                )
                if not self._wait:
                    raise AudioDeviceError(reason) from exc
        log.error("%s; waiting for it, retrying in %.1f s", reason, self._backoff.delay_s)
        if self.on_waiting is not None:
            self.on_waiting(reason)
        self._missing = None
        return self._reopen()

    def blocks(self) -> Iterator[AudioBlock]:
        while not self._queue.empty():  # leftovers of an earlier blocks() run
            self._queue.get_nowait()
        stream = self._first_stream()
        if stream is None:
            return
        resampler = StreamingResampler(self.native_rate, self.sample_rate)
        reblock = _Reblocker(self.block_size)
        opened = last_audio = time.monotonic()
        dropped_seen = self._dropped_frames
        try:
            while not self._closed.is_set():
                try:
                    data, dropped = self._queue.get(timeout=0.1)
                except queue.Empty:
                    data = None
                    self._beat()
                if data is not None:
                    last_audio = time.monotonic()
                    self._backoff.flowing(last_audio - opened)
                    if dropped != dropped_seen:
                        lost = (dropped - dropped_seen) * self.sample_rate / self.native_rate
                        dropped_seen = dropped
                        # The filter's tail belongs to the audio before the hole.
                        yield from reblock.push(resampler.flush())
                        yield from reblock.skip(max(1, round(lost)))
                    yield from reblock.push(resampler.process(data))
                    continue
                failed = self._stream_ended.is_set() or not stream.active
                stalled = time.monotonic() - last_audio > self._stall_s
                if not (failed or stalled):
                    continue
                log.warning(
                    "audio input %r %s; reopening",
                    self.device.name,
                    "stopped" if failed else f"delivered nothing for {self._stall_s:g} s",
                )
                stream.close(ignore_errors=True)
                stream = None
                # The old stream's tail is still in the filter: keep it, then start afresh.
                yield from reblock.push(resampler.flush())
                stream = self._reopen()
                if stream is None:
                    return
                if resampler.in_rate != self.native_rate:
                    resampler = StreamingResampler(self.native_rate, self.sample_rate)
                if reblock.next_start or reblock.filled:
                    # The time the device was away (the new stream's latency aside); a
                    # stream that never delivered has no time to count yet.
                    away_s = time.monotonic() - last_audio
                    yield from reblock.skip(max(1, round(away_s * self.sample_rate)))
                dropped_seen = self._dropped_frames
                opened = last_audio = time.monotonic()
        finally:
            if stream is not None:
                stream.close(ignore_errors=True)


def open_source(
    spec: str | int | None,
    *,
    file: Path | None,
    target_rate: int,
    block_size: int = DEFAULT_BLOCK,
    realtime: bool = False,
) -> FileSource | MicSource:
    """A FileSource when `file` is given, else a MicSource for the device `spec`."""
    if file is not None:
        return FileSource(file, target_rate, block_size=block_size, realtime=realtime)
    return MicSource(spec, target_rate, block_size=block_size)
