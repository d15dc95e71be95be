"""Streaming clap transient detector: finds onsets precisely and judges their shape.

Why it is built this way:

* Everything happens on a fixed frame grid (`HOP` samples) counted from the start of the
  stream, and every decision only looks at samples before a grid point, so the output is
  the same whatever chunk sizes the audio arrives in.
* Onsets are found on the energy of a high-passed signal (a linear-phase FIR, so no scipy
  is needed on a Pi and its delay is exact). Rumble, hum and most footstep energy sit
  below the corner and never reach the onset detector.
* The noise floor follows the background (falls quickly, rises slowly, frozen while a
  transient is ringing out), and an onset must both clear it by `onset_threshold_db` and
  be a jump over the frames just before it. Steady rain, a vacuum cleaner or a washing
  machine raise the floor instead of triggering; their switch-on fails the decay test.
* Each onset is refined to the first sample where the (sub-millisecond) envelope rises
  clearly above the pre-onset level, then the transient's shape is measured: rise time,
  decay time, spectral centroid and high/low band ratio over the first 20 ms, crest
  factor. On real ESC-50 clips, claps are fast (rise of a few ms), short (decay ~10-60 ms)
  and broadband; wood knocks and footsteps carry most of their energy below 1.5 kHz.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.events import Clap

HOP = 128
#: Length of the spectral-feature window after the onset (seconds).
SPECTRUM_S = 0.020
#: Envelope smoothing for onset refinement (seconds): short enough for ~1 ms precision.
FAST_ENV_S = 0.0008
#: Envelope smoothing for the decay measurement (seconds).
SLOW_ENV_S = 0.004
#: An onset must rise this much over the quietest of the previous frames (dB); out of a
#: steady background no more than the onset threshold asks (`_rise_needed`).
RISE_DB = 8.0
#: How many earlier frames the rise test compares against.
RISE_FRAMES = 3
#: How far back (frames, 29 ms) the rise test may reach for the background itself. A
#: clap's first contact can lift the level 5 dB over rain 15 ms before its main burst:
#: within three frames the burst rose only 7 dB over that contact and the clap was never
#: heard. Reaching further back only to the background, never into the ring of an earlier
#: transient, keeps a reverberant clap's second burst 120 ms on from becoming a "clap".
BACKGROUND_FRAMES = 5
#: Within the refractory time, a frame this much louder than the last onset's transient
#: (up to the dip before this rise) is a new transient (a clap right after a clock tick),
#: not the first one's ring.
PREEMPT_DB = 6.0
#: A transient has died away once it has fallen this far below its peak (dB).
DIED_AWAY_DB = 12.0
#: The rise time runs from the onset to the first moment within this much of the peak,
#: so a faint contact click or a flam before the main burst does not make it "slow".
RISE_TO_DB = 6.0
_TINY = 1e-12


def _db(power: float | np.ndarray) -> float | np.ndarray:
    return 10.0 * np.log10(np.maximum(power, _TINY))


def highpass_fir(sample_rate: int, corner_hz: float, taps: int = 129) -> np.ndarray:
    """Windowed-sinc linear-phase high-pass (spectral inversion of a Blackman low-pass)."""
    if taps % 2 == 0:
        raise ValueError("taps must be odd for a linear-phase high-pass")
    n = np.arange(taps) - (taps - 1) / 2
    fc = corner_hz / sample_rate
    lowpass = 2 * fc * np.sinc(2 * fc * n) * np.blackman(taps)
    lowpass /= lowpass.sum()
    highpass = -lowpass
    highpass[(taps - 1) // 2] += 1.0
    return highpass


@dataclass(frozen=True)
class ClapCandidate:
    """A transient with the measurements that decide whether it is a clap."""

    #: Refined onset, sample index at the model rate from the start of the stream.
    sample: int
    #: Energy (dBFS, RMS) of the high-passed signal: loudest 20 ms within 60 ms of onset.
    level_db: float
    #: Noise floor (dBFS) when the onset was found.
    floor_db: float
    #: Onset to the first moment within `RISE_TO_DB` of the envelope peak.
    rise_ms: float
    #: Time from the envelope peak until it fell 20 dB (or to just above the floor).
    decay_ms: float
    centroid_hz: float
    #: Energy above 1.5 kHz over energy in 100-1,500 Hz, first 20 ms (dB).
    high_ratio_db: float
    crest_db: float
    #: Repetition at a voice's pitch period, 0..1 (`periodicity`).
    periodicity: float
    #: Shape score 0..1; `is_clap` compares it with `ClapSettings.min_score`.
    score: float
    is_clap: bool

    def to_clap(self) -> Clap:
        return Clap(sample=self.sample, level_db=self.level_db, score=self.score)


def _soft(value: float, limit: float, width: float, above: bool) -> float:
    """Smooth pass mark: 0.5 at the limit, towards 1 on the good side."""
    x = (value - limit) / width if above else (limit - value) / width
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, x))))


#: Pitch periods a voice (a laugh, a cough, a bark) repeats at: 2.5-12.5 ms (80-400 Hz).
PERIOD_RANGE_S = (0.0025, 0.0125)


@lru_cache(maxsize=4)
def _hanning_autocorr(n: int) -> np.ndarray:
    """The analysis window's own autocorrelation (the same for every candidate)."""
    win = np.hanning(n)
    out = np.correlate(win, win, mode="full")[n - 1 :]
    out.setflags(write=False)
    return out


def periodicity(frame: np.ndarray, background: np.ndarray, sample_rate: int) -> float:
    """How strongly the transient repeats at a voice's pitch period (0 noise .. 1 a tone).

    A clap is a burst of noise; laughter, coughs and barks that are sharp enough to pass
    the other tests are voiced. The autocorrelation comes from the power spectrum with the
    background's spectrum taken out (so a humming washing machine does not make a clap
    look voiced), divided by the analysis window's own autocorrelation.
    """
    n = len(frame)
    nfft = 1 << (2 * n - 1).bit_length()
    power = np.abs(np.fft.rfft(frame, nfft)) ** 2 - np.abs(np.fft.rfft(background, nfft)) ** 2
    ac = np.fft.irfft(np.maximum(power, 0.0), nfft)[:n]
    if ac[0] <= _TINY:
        return 0.0
    win_ac = _hanning_autocorr(n)
    lo, hi = (int(round(t * sample_rate)) for t in PERIOD_RANGE_S)
    hi = min(hi, n - 1)
    if hi <= lo:
        return 0.0
    norm = (ac[lo:hi] / ac[0]) / (win_ac[lo:hi] / win_ac[0])
    return float(np.clip(norm.max(), 0.0, 1.0))


def shape_score(
    rise_ms: float,
    decay_ms: float,
    centroid_hz: float,
    high_ratio_db: float,
    s: ClapSettings,
    voiced: float = 0.0,
) -> float:
    """The weakest soft pass mark: 0.5 means every measure is at worst at its limit."""
    marks = [
        _soft(rise_ms, s.max_rise_ms, 2.0, above=False),
        _soft(decay_ms, s.max_decay_ms, 20.0, above=False),
        _soft(centroid_hz, s.min_centroid_hz, 150.0, above=True),
        _soft(high_ratio_db, s.min_high_ratio_db, 3.0, above=True),
        _soft(voiced, s.max_periodicity, 0.03, above=False),
    ]
    if s.max_centroid_hz is not None:
        marks.append(_soft(centroid_hz, s.max_centroid_hz, 150.0, above=False))
    return float(min(marks))


class _History:
    """Recent samples addressed by absolute stream index.

    A preallocated buffer that is compacted only when full (one copy per `keep` samples
    appended), so appending a small piece costs O(piece), not O(history): this runs for
    every 128-sample hop on a Raspberry Pi.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._buf = np.zeros(2 * keep + 1024, dtype=np.float64)
        self._n = 0
        self.start = 0

    @property
    def data(self) -> np.ndarray:
        return self._buf[: self._n]

    @property
    def end(self) -> int:
        return self.start + self._n

    def append(self, x: np.ndarray) -> None:
        n = len(x)
        if self._n + n > len(self._buf):
            kept = min(self._n, self.keep)
            drop = self._n - kept
            self._buf[:kept] = self._buf[drop : self._n]
            self._n = kept
            self.start += drop
            if self._n + n > len(self._buf):
                grown = np.zeros(self._n + n + self.keep, dtype=np.float64)
                grown[: self._n] = self._buf[: self._n]
                self._buf = grown
        self._buf[self._n : self._n + n] = x
        self._n += n

    def resized(self, keep: int) -> _History:
        """The same recent audio with a new minimum length (rules changed the max count)."""
        other = _History(keep)
        other.start = self.start
        other.append(self.data)
        return other

    def get(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b); positions before the stream start (or trimmed) read as zeros."""
        out = np.zeros(max(0, b - a))
        lo, hi = max(a, self.start), min(b, self.end)
        if hi > lo:
            out[lo - a : hi - a] = self._buf[lo - self.start : hi - self.start]
        return out


@dataclass
class _Pending:
    frame_start: int
    floor_db: float
    #: Where the background ends: the frame start, or that of a faint precursor this
    #: onset replaced (the precursor belongs to the transient, not to the background).
    quiet_until: int


class ClapDetector:
    """Feed audio with `push`; get every transient candidate (claps and rejected ones).

    A candidate at onset `s` is reported once `settled_sample` has passed `s`; all
    candidates with an onset before `settled_sample` have then been returned.
    """

    def __init__(
        self,
        settings: ClapSettings,
        sample_rate: int = 22050,
        background_frames: int = BACKGROUND_FRAMES,
    ) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self.background_frames = max(RISE_FRAMES, background_frames)
        self.fir = highpass_fir(sample_rate, settings.highpass_hz)
        self.delay = (len(self.fir) - 1) // 2
        hop_s = HOP / sample_rate
        self._up = 1.0 - math.exp(-hop_s / settings.noise_floor_time_s)
        self._down = 1.0 - math.exp(-hop_s / 0.15)
        self.lookahead = int(round((settings.max_decay_ms / 1000 + 0.03) * sample_rate))
        self._spec_n = int(round(SPECTRUM_S * sample_rate))
        self._refractory = int(round(settings.refractory_s * sample_rate))
        self._fast_n = max(1, int(round(FAST_ENV_S * sample_rate)))
        self._slow_n = max(1, int(round(SLOW_ENV_S * sample_rate)))
        # A precursor's background lies up to the refractory time before the onset.
        keep = self.lookahead + 8 * HOP + 4 * self._spec_n + len(self.fir) + self._refractory
        self.raw = _History(keep)
        self.hp = _History(keep)
        self.reset()

    def reset(self) -> None:
        self.raw = _History(self.raw.keep)
        self.hp = _History(self.hp.keep)
        self.floor_db: float | None = None
        #: (frame start, level) of the last `background_frames` frames.
        self._recent: list[tuple[int, float]] = []
        self._next_frame = 0  # start of the next hp frame to analyse
        self._last_onset = -(10**12)
        #: (frame start, level) of every frame since the last onset, the onset's first.
        self._since_onset: list[tuple[int, float]] = []
        self._freeze_until = -1
        self._pending: list[_Pending] = []

    @property
    def settled_sample(self) -> int:
        """Every candidate with an onset before this sample has been returned."""
        done = self._next_frame - 2 * HOP
        if self._pending:
            done = min(done, self._pending[0].frame_start - 2 * HOP)
        return max(0, done)

    @property
    def measuring(self) -> bool:
        """An onset heard and still being measured (its decay, within the look-ahead)."""
        return bool(self._pending)

    @property
    def noise_floor_db(self) -> float:
        return -120.0 if self.floor_db is None else float(self.floor_db)

    def push(self, samples: np.ndarray) -> list[ClapCandidate]:
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        out: list[ClapCandidate] = []
        # Small pieces keep the trimmed histories long enough for every frame.
        for i in range(0, x.size, 16 * HOP):
            out.extend(self._push_piece(x[i : i + 16 * HOP]))
        return out

    def _push_piece(self, x: np.ndarray) -> list[ClapCandidate]:
        self.raw.append(x)
        # High-passed output index i needs raw samples up to i + delay.
        hp_ready = self.raw.end - self.delay
        if hp_ready > self.hp.end:
            a = self.hp.end
            seg = self.raw.get(a - self.delay, hp_ready + self.delay)
            self.hp.append(np.convolve(seg, self.fir, mode="valid"))
        out: list[ClapCandidate] = []
        while self._next_frame + HOP <= self.hp.end:
            self._analyse_frame(self._next_frame)
            self._next_frame += HOP
            out.extend(self._evaluate_pending())
        return out

    # --- onset detection ---------------------------------------------------------------

    def _analyse_frame(self, start: int) -> None:
        s = self.settings
        frame = self.hp.get(start, start + HOP)
        level = float(_db(np.mean(frame * frame)))
        level = max(level, -120.0)
        if self.floor_db is None:
            self.floor_db = level
        floor = self.floor_db
        quiet_at, quiet_before = min(
            self._recent[-RISE_FRAMES:], key=lambda f: f[1], default=(start, level)
        )
        far_at, far_before = min(self._recent, key=lambda f: f[1], default=(start, level))
        if far_before < min(quiet_before, floor + s.onset_threshold_db):
            quiet_at, quiet_before = far_at, far_before
        refractory = start - self._last_onset < self._refractory
        preempts = refractory and level >= self._earlier_peak(quiet_at, quiet_before) + PREEMPT_DB
        is_onset = (
            level >= floor + s.onset_threshold_db
            and level >= s.min_level_db
            and level - quiet_before >= self._rise_needed(floor, quiet_before)
            and (not refractory or preempts)
        )
        if is_onset:
            quiet_until = start
            if preempts and self._pending and self._pending[-1].frame_start == self._last_onset:
                # The earlier onset was a faint precursor of this one (or a background
                # tick just before a clap): measuring both would double-count the clap.
                quiet_until = self._pending.pop().quiet_until
            self._pending.append(_Pending(start, floor, quiet_until))
            self._last_onset = start
            self._since_onset = [(start, level)]
            self._freeze_until = start + self.lookahead
        elif refractory:
            self._since_onset.append((start, level))
        # Track the background, but not with the transient we are measuring.
        if level < floor:
            self.floor_db = floor + (level - floor) * self._down
        elif start > self._freeze_until:
            self.floor_db = floor + (level - floor) * self._up
        self._recent.append((start, level))
        if len(self._recent) > self.background_frames:
            self._recent.pop(0)

    def _rise_needed(self, floor: float, quiet_before: float) -> float:
        """How far an onset must jump over the quietest of the frames just before it.

        Out of the background, no more than the threshold asks: a room calibrated (or set)
        to 5 dB wants claps that stand out that little. Inside a sound (the frames before
        are themselves the threshold above the floor) always RISE_DB: a lower threshold
        must not split a clap whose ring carries a second burst (a flam, an echo).
        """
        threshold = self.settings.onset_threshold_db
        if quiet_before >= floor + threshold:
            return RISE_DB
        return min(RISE_DB, threshold)

    def _earlier_peak(self, quiet_at: int, quiet_db: float) -> float:
        """The loudest the last transient got before the rise now under way began.

        A new transient preempts the last one when it is PREEMPT_DB louder than that. Its
        own first rising frames do not count: a clap 60 ms after a keystroke reached 5.7 dB
        over the keystroke in its first frame, and compared with that frame its louder
        second one was no new transient, so the clap was lost. When the quiet frame lies
        before the onset, or the last transient has not died away, everything since the
        onset counts.
        """
        everything = max((v for _, v in self._since_onset), default=-120.0)
        before = [v for t, v in self._since_onset if t <= quiet_at]
        if not before:
            return everything
        peak = max(before)
        # Only after the last transient has died away (a keystroke's click, not a can's
        # crack running into its fizz) is the new rise a transient of its own.
        return peak if quiet_db <= peak - DIED_AWAY_DB else everything

    # --- measurement -------------------------------------------------------------------

    def _evaluate_pending(self) -> list[ClapCandidate]:
        # Measured once the frames up to its lookahead have been analysed, not once that much
        # audio has arrived: a later frame may still replace the onset (a flam before the
        # burst), and how far the audio reaches ahead of the frames depends on chunk sizes.
        out = []
        while self._pending and self._pending[0].frame_start + self.lookahead <= self._next_frame:
            p = self._pending.pop(0)
            cand = self.measure(p.frame_start, p.floor_db, p.quiet_until)
            if cand is not None:
                out.append(cand)
        return out

    def measure(self, frame_start: int, floor_db: float, quiet_until: int) -> ClapCandidate | None:
        """Refine the onset inside/just before `frame_start` and measure the shape.

        `quiet_until`: the background's spectrum is taken before this sample (and before
        the onset), so a clap's own first contact, 30 ms before its main burst, is not
        subtracted from it as "background" (that left a dull, voiced-looking remainder).
        """
        s = self.settings
        sr = self.sample_rate
        a = frame_start - 2 * HOP
        b = frame_start + self.lookahead
        hp = self.hp.get(a, b)
        p = hp * hp
        fast = np.convolve(p, np.ones(self._fast_n) / self._fast_n, mode="same")
        slow = np.convolve(p, np.ones(self._slow_n) / self._slow_n, mode="same")
        # Peak within the onset frame and the allowed rise after it.
        search_end = (frame_start - a) + HOP + int(s.max_rise_ms / 1000 * sr) + HOP
        peak_i = int(np.argmax(fast[: min(search_end, len(fast))]))
        peak = fast[peak_i]
        if peak <= _TINY:
            return None
        pre = fast[: max(1, (frame_start - a) - HOP)]
        base = float(np.median(pre)) if pre.size else 0.0
        floor_pow = 10 ** (floor_db / 10)
        # Onset: first sample of the rise where the envelope is clearly above both the
        # pre-onset level and well on its way to the peak (-20 dB).
        level_mark = max(peak * 0.01, 4.0 * max(base, floor_pow))
        j = peak_i
        while j > 0 and fast[j - 1] >= level_mark:
            j -= 1
        onset = a + j
        # Level: the loudest 20 ms window within 60 ms of the onset (a clap can start
        # with a weak contact click before its main burst).
        w = hp[j : j + self._spec_n]
        body = p[j : j + 3 * self._spec_n]
        if body.size >= self._spec_n:
            csum = np.concatenate([[0.0], np.cumsum(body)])
            win_e = (csum[self._spec_n :] - csum[: -self._spec_n]) / self._spec_n
            level_db = float(_db(win_e.max()))
        else:
            level_db = float(_db(np.mean(body))) if body.size else -120.0
        near_peak = np.nonzero(fast[j : peak_i + 1] >= peak * 10 ** (-RISE_TO_DB / 10))[0]
        rise_ms = (int(near_peak[0]) if near_peak.size else peak_i - j) / sr * 1000.0
        # Decay: from the slow-envelope peak until it is 20 dB lower or near the floor.
        sp_i = int(np.argmax(slow[j : j + self._spec_n])) + j
        sp = slow[sp_i]
        # Local background: the pre-onset envelope (more exact than the running floor).
        pre_slow = slow[: max(1, (frame_start - a) - HOP)]
        local_bg = max(float(np.median(pre_slow)), floor_pow)
        target = max(sp * 0.01, local_bg * 4.0)
        after = np.nonzero(slow[sp_i:] <= target)[0]
        decay_ms = (after[0] if after.size else len(slow) - sp_i) / sr * 1000.0
        # Spectrum of the first 20 ms of the raw (not high-passed) signal.
        # The background's spectrum (just before the onset) is subtracted, so steady noise
        # does not make a knock look bright or a clap look dull.
        n_win = 2 * self._spec_n
        win = np.hanning(n_win)
        raw = self.raw.get(onset - 32, onset - 32 + n_win)
        # A chain of pre-empting onsets carries `quiet_until` back to its first: no further
        # than the history is sure to hold (one refractory time), or what it reads would
        # depend on when the history last dropped old audio, i.e. on chunk sizes.
        bg_end = max(min(onset, quiet_until), onset - self._refractory)
        bg = self.raw.get(bg_end - 64 - n_win, bg_end - 64)
        spec = np.abs(np.fft.rfft(raw * win)) ** 2
        spec = np.maximum(spec - np.abs(np.fft.rfft(bg * win)) ** 2, 0.0)
        freqs = np.fft.rfftfreq(n_win, 1.0 / sr)
        band = (freqs >= 100) & (freqs <= 10000)
        total = float(spec[band].sum()) + _TINY
        centroid = float((spec[band] * freqs[band]).sum() / total)
        high = float(spec[freqs > 1500].sum())
        low = float(spec[(freqs >= 100) & (freqs <= 1500)].sum())
        high_ratio_db = float(_db(high) - _db(low))
        peak_abs = float(np.max(np.abs(w))) if w.size else 0.0
        crest_db = float(_db(peak_abs**2) - _db(np.mean(w * w))) if w.size else 0.0
        voiced = periodicity(raw * win, bg * win, sr)
        score = shape_score(rise_ms, decay_ms, centroid, high_ratio_db, s, voiced)
        return ClapCandidate(
            sample=int(onset),
            level_db=level_db,
            floor_db=float(floor_db),
            rise_ms=float(rise_ms),
            decay_ms=float(decay_ms),
            centroid_hz=centroid,
            high_ratio_db=high_ratio_db,
            crest_db=crest_db,
            periodicity=voiced,
            score=score,
            is_clap=score >= s.min_score and level_db >= s.min_level_db,
        )


class BusyBackgroundGate:
    """Claps must stand out from a background that is itself full of transients.

    The noise floor cannot see a ticking clock or typing: between ticks the room is quiet.
    This gate remembers every transient (clap-shaped or not) of the last
    `busy_window_s`; when there are many, a clap must be `busy_margin_db` louder than
    their median. A command of a few claps barely moves the median, applause (all
    transients alike) is muted, which is what we want anyway.
    """

    def __init__(self, settings: ClapSettings, sample_rate: int) -> None:
        self.settings = settings
        self.window = int(settings.busy_window_s * sample_rate)
        self._recent: list[tuple[int, float]] = []

    def reset(self) -> None:
        self._recent = []

    def admit(self, cand: ClapCandidate, exclude: Collection[int] = ()) -> bool:
        """Record `cand` and say whether it may count as a clap (pass candidates in order).

        `exclude`: onsets of the claps of the pattern being collected. They are part of the
        command, not of the background it must stand out from (otherwise the third clap of
        a pattern would be judged against the first two).
        """
        s = self.settings
        self._recent = [(t, v) for t, v in self._recent if cand.sample - t <= self.window]
        background = [v for t, v in self._recent if t not in exclude]
        ok = True
        if len(background) >= s.busy_min_transients:
            typical = float(np.median(background))
            ok = cand.level_db >= typical + s.busy_margin_db
        self._recent.append((cand.sample, cand.level_db))
        return ok
