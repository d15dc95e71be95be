"""Calibration measurements: the room's background and the user's claps, as the detector sees them.

Why it is built this way:

* Every number is measured as the clap detector (`ClapDetector`) measures it: clap levels
  by the detector itself, the background on the same high-passed signal and frame grid,
  so a threshold proposed here means what the daemon will compare it with. The noise
  floor is the 10th percentile of the background's frame levels, which is where the
  detector's adaptive floor (falls fast, rises slowly) settles: within ~2 dB on ESC-50
  rain, wind, vacuum cleaner, washing machine, crickets, clock and typing. The follower's
  own value is not used because it depends on how the stream started (a driver's
  fade-in or a resampler's first samples drag it down for seconds).
* The stream is split into phases by sample count only (the first `noise_samples` are the
  background, everything after them is the clapping), so a file and a microphone give the
  same result and the chunk size never matters.
* Audio drivers often start with a burst of digital silence. It is not the room, so the
  stream starts at the first non-zero sample; otherwise the detector's floor would start
  at -120 dB and need seconds to climb to the real background.
* While measuring, the detector runs with a low onset threshold and no absolute level
  floor: calibration must see quiet claps to be able to say they are quiet. Which
  transients count as the user's claps is decided afterwards from their shape (the
  detector's `is_clap`) and their loudness: clearly above the background floor, louder
  than any clap-like sound the background made by itself during the quiet phase (rain
  drops, a ticking clock), and within CLAP_WINDOW_DB of the loudest clap.
* One or two clap-like sounds of the quiet phase that are as loud as the claps and stand
  far above everything else the room did then are taken for the user clapping before the
  prompt, not for the room (`early_claps`): they are left out of that bar and of the
  background's level statistics, else the real claps, as loud as the early one, would all
  be rejected with the wrong advice (clap louder, check the gain). They are still
  reported, so the user hears to keep quiet until prompted.

The proposal (`propose`) explains itself in `Proposal.notes`; see its docstring for the
threshold and gap logic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from claudio_daemon.calibrate.model import Calibration
from claudio_daemon.detect.claps import HOP, ClapCandidate, ClapDetector, highpass_fir
from claudio_daemon.detect.settings import ClapSettings

#: Onset threshold (dB above the floor) used while measuring: low, to see quiet claps too.
MEASURE_ONSET_DB = 6.0
#: The first part of the background phase (a driver's fade-in, the floor settling) is not used.
SETTLE_S = 0.5
#: The detector's adaptive floor settles near this percentile of the background's frame levels.
FLOOR_PERCENTILE = 10.0
#: How high the background alone rises above the floor: this percentile of frame levels.
NOISE_PERCENTILE = 99.5
#: Clap-shaped transients this much quieter than the loudest clap are background, not claps
#: (wider than the detector's `level_range_db`, so a soft clap of the calibration is still seen).
CLAP_WINDOW_DB = 10.0
#: A clap must stand this far above the background floor ...
MIN_CLAP_RISE_DB = 10.0
#: ... and this far above the loudest clap-shaped sound the background made by itself.
OVER_BACKGROUND_DB = 3.0
#: At most this many quiet-phase clap-like sounds can be an early clap (a clap or two before
#: the prompt); more is the room itself (a loud clock), which the claps must stand above.
MAX_EARLY_CLAPS = 2
#: An early clap's frames (from its onset, at least this long, more for a long decay) are
#: left out of the background's level statistics.
EARLY_CLAP_SPAN_S = 0.3
#: The threshold lets a clap this much softer than the softest measured one through.
CLAP_SPREAD_DB = 6.0
#: The background alone should stay at least this far below the threshold.
NOISE_MARGIN_DB = 2.0
#: Gap proposal bounds (seconds).
MIN_GAP_BOUNDS = (0.08, 0.25)
MAX_GAP_BOUNDS = (0.4, 2.0)
#: Warnings: a background floor above this is loud; claps should stand this far above it.
LOUD_FLOOR_DB = -30.0
MIN_CLAP_MARGIN_DB = 15.0
#: A sample peak at or above this (dBFS) means the input is clipping.
CLIP_DBFS = -0.5


def _db(power: float) -> float:
    return 10.0 * math.log10(max(power, 1e-12))


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


@dataclass(frozen=True)
class NoiseReport:
    """The background phase."""

    duration_s: float
    #: Background floor (dBFS, high-passed): where the detector's adaptive floor settles.
    floor_db: float
    #: Energy-mean level of the high-passed background (dBFS): a little above the floor.
    level_db: float
    #: RMS level of the unfiltered input (dBFS), what a plain level meter shows.
    raw_level_db: float
    #: How far above the floor the background alone rises (dB, NOISE_PERCENTILE of frames).
    upper_db: float
    #: Highest sample magnitude (dBFS).
    peak_dbfs: float
    #: Transients the detector found while the room should have been quiet (with the
    #: sensitive measuring settings).
    transients: int
    #: Of those, how many the configured detector would have taken for claps.
    clap_like: int
    #: Of the clap-like ones, those as loud as the claps and CLAP_WINDOW_DB above all the
    #: others: the user clapping before the prompt; left out of `clap_bar_db`, `level_db`
    #: and `upper_db`.
    early_claps: int = 0
    #: The level (dBFS) a clap had to reach: MIN_CLAP_RISE_DB above the floor and
    #: OVER_BACKGROUND_DB above the room's own clap-like sounds (early claps left out).
    clap_bar_db: float = -120.0


@dataclass(frozen=True)
class ClapReport:
    """The clapping phase."""

    asked: int
    sample_rate: int
    duration_s: float
    #: The user's claps, in time order.
    claps: tuple[ClapCandidate, ...]
    #: Other transients in the phase (wrong shape, or far quieter than the claps).
    others: int
    peak_dbfs: float
    #: Clap-shaped transients of the phase loud enough for a clap over the floor, but not
    #: louder than the quiet phase's clap-like sounds (`NoiseReport.clap_bar_db`): claps
    #: lost to a noisy or not-quiet background phase, not to a weak microphone.
    below_bar: int = 0

    @property
    def count(self) -> int:
        return len(self.claps)

    @property
    def level_db(self) -> float:
        """Typical clap level (dBFS, the detector's peak-window level): the median."""
        return float(np.median([c.level_db for c in self.claps]))

    @property
    def quietest_db(self) -> float:
        return min(c.level_db for c in self.claps)

    @property
    def loudest_db(self) -> float:
        return max(c.level_db for c in self.claps)

    @property
    def rise_ms(self) -> float:
        return float(np.median([c.rise_ms for c in self.claps]))

    @property
    def decay_ms(self) -> float:
        return float(np.median([c.decay_ms for c in self.claps]))

    @property
    def min_score(self) -> float:
        return min(c.score for c in self.claps)

    @property
    def brightest_hz(self) -> float:
        """The highest spectral centroid among the claps (claps.max_centroid_hz must stay
        well above it)."""
        return max(c.centroid_hz for c in self.claps)

    @property
    def gaps_s(self) -> tuple[float, ...]:
        t = [c.sample for c in self.claps]
        return tuple((b - a) / self.sample_rate for a, b in zip(t[:-1], t[1:], strict=True))


@dataclass(frozen=True)
class Proposal:
    calibration: Calibration
    #: Things the user should know (too noisy, clipping, wrong count, ...).
    warnings: tuple[str, ...]
    #: How each proposed value was derived, one line each.
    notes: tuple[str, ...]


def measuring_settings(settings: ClapSettings) -> ClapSettings:
    """The user's detector settings, made sensitive enough to measure quiet claps."""
    return settings.model_copy(
        update={
            "onset_threshold_db": min(MEASURE_ONSET_DB, settings.onset_threshold_db),
            "min_level_db": -120.0,
            # Claps brighter than a set limit are measured too, so calibrate can say so.
            "max_centroid_hz": None,
        }
    )


class Measurer:
    """Feed the whole stream with `push`; the first `noise_samples` are the background.

    Keeps the background phase's audio (a few seconds, in memory only) for its level
    statistics; the clapping phase is only seen by the detector.
    """

    def __init__(self, settings: ClapSettings, sample_rate: int, noise_samples: int) -> None:
        if noise_samples < int(SETTLE_S * sample_rate) + 16 * HOP:
            raise ValueError(
                f"the background phase must be longer than {SETTLE_S + 0.1:g} s "
                f"({noise_samples} samples at {sample_rate} Hz is too short)"
            )
        self.settings = settings
        self.sample_rate = int(sample_rate)
        self.noise_samples = int(noise_samples)
        self.detector = ClapDetector(measuring_settings(settings), self.sample_rate)
        self._settle = int(SETTLE_S * self.sample_rate)
        self._noise = np.zeros(self.noise_samples, dtype=np.float32)
        # Background frame levels and their first samples, once the phase is complete.
        self._levels: tuple[np.ndarray, np.ndarray] | None = None
        self._candidates: list[ClapCandidate] = []
        self._seen = 0
        self._skipped = 0
        self._clap_peak = 0.0
        self._finished = False

    @property
    def samples_seen(self) -> int:
        """Samples measured, from the first non-zero one."""
        return self._seen

    @property
    def silent_samples(self) -> int:
        """Leading digital silence skipped so far."""
        return self._skipped

    def push(self, samples: np.ndarray) -> None:
        if self._finished:
            raise RuntimeError("finish() was called; start a new Measurer")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._seen == 0:
            live = np.flatnonzero(x)
            first = int(live[0]) if live.size else x.size
            self._skipped += first
            x = x[first:]
        if x.size == 0:
            return
        take = min(x.size, max(0, self.noise_samples - self._seen))
        self._noise[self._seen : self._seen + take] = x[:take]
        if take < x.size:
            self._clap_peak = max(self._clap_peak, float(np.max(np.abs(x[take:]))))
        self._candidates.extend(self.detector.push(x))
        self._seen += x.size

    def finish(self) -> None:
        """Flush the detector (it reports a transient only after its decay has been seen)."""
        if not self._finished:
            tail = self.detector.lookahead + 4 * HOP + self.detector.delay
            self._candidates.extend(self.detector.push(np.zeros(tail, dtype=np.float32)))
            self._finished = True

    # --- background statistics -------------------------------------------------------

    def _frame_levels(self) -> np.ndarray:
        """Per-frame levels (dB) of the high-passed background after the settling time,
        on the detector's frame grid; digital silence (dropouts) left out."""
        return self._framed()[0]

    def _framed(self) -> tuple[np.ndarray, np.ndarray]:
        """`_frame_levels` and each frame's first sample."""
        if self._levels is not None:
            return self._levels
        n = min(self._seen, self.noise_samples)
        x = self._noise[:n].astype(np.float64)
        fir = highpass_fir(self.sample_rate, self.settings.highpass_hz)
        delay = (len(fir) - 1) // 2
        # Same filter and alignment as the detector (zeros before the stream start).
        hp = np.convolve(x, fir, mode="full")[delay : delay + n]
        frames = hp[: n // HOP * HOP].reshape(-1, HOP)
        skip = min(self._settle // HOP, max(0, len(frames) - 8))
        power = np.mean(frames[skip:] ** 2, axis=1)
        levels = 10.0 * np.log10(np.maximum(power, 1e-12))
        starts = (np.arange(levels.size) + skip) * HOP
        live = levels > -119.0
        framed = (levels[live], starts[live])
        if n == self.noise_samples:
            self._levels = framed
        return framed

    def _room_levels(self) -> np.ndarray:
        """`_frame_levels` without the frames of early claps (`_split_background`).

        The background's rise (`upper_db`, its 99.5th percentile: the top frame or two of
        a few seconds) sets the lowest onset threshold; a clap's frames in it would put
        the threshold above the claps themselves.
        """
        levels, starts = self._framed()
        keep = np.ones(levels.size, dtype=bool)
        for c in self._split_background()[1]:
            span = max(EARLY_CLAP_SPAN_S, 2.0 * (c.rise_ms + c.decay_ms) / 1000.0)
            end = c.sample + int(span * self.sample_rate)
            keep &= (starts + HOP <= c.sample - 2 * HOP) | (starts >= end)
        return levels[keep]

    def _floor_db(self) -> float:
        levels = self._frame_levels()
        return float(np.percentile(levels, FLOOR_PERCENTILE)) if levels.size else -120.0

    def _split_background(self) -> tuple[list[ClapCandidate], list[ClapCandidate]]:
        """The quiet phase's clap-like sounds, loudest first: (the room's own, early claps).

        Early claps are the loudest one or two (MAX_EARLY_CLAPS) when they stand
        CLAP_WINDOW_DB above every other clap-like sound of the phase and above the
        level a clap needs anyway, and are as loud as the claps (no more than
        CLAP_WINDOW_DB below the loudest clap-shaped sound of the clapping phase): a rain
        drop or clock tick as loud as a clap comes with siblings of about its level, a
        clap made before the prompt does not, and a lone tick far below the claps is the
        room, which the threshold must stay above.
        """
        found = sorted(
            (c for c in self._background_candidates() if c.is_clap),
            key=lambda c: c.level_db,
            reverse=True,
        )
        need = self._floor_db() + MIN_CLAP_RISE_DB
        claps = [c.level_db for c in self._clap_phase() if c.is_clap and c.level_db >= need]
        if not claps:
            return found, []
        as_loud = max(claps) - CLAP_WINDOW_DB
        for k in range(1, min(MAX_EARLY_CLAPS, len(found)) + 1):
            rest = found[k].level_db if k < len(found) else -math.inf
            quietest = found[k - 1].level_db
            if quietest >= max(rest, need) + CLAP_WINDOW_DB and quietest >= as_loud:
                return found[k:], found[:k]
        return found, []

    def _clap_bar_db(self) -> float:
        """The level a clap of the clapping phase must reach (see `NoiseReport.clap_bar_db`)."""
        room, _ = self._split_background()
        return max(
            self._floor_db() + MIN_CLAP_RISE_DB,
            max((c.level_db for c in room), default=-120.0) + OVER_BACKGROUND_DB,
        )

    def _background_candidates(self) -> list[ClapCandidate]:
        """Transients of the quiet phase, after the start-up (a driver's fade-in or a
        resampler's first samples look like an onset from silence)."""
        return [c for c in self._candidates if self._settle <= c.sample < self.noise_samples]

    # --- reports ---------------------------------------------------------------------

    def _clap_phase(self) -> list[ClapCandidate]:
        return [c for c in self._candidates if self.noise_samples <= c.sample < self._seen]

    def current_claps(self) -> list[ClapCandidate]:
        """The claps heard so far in the clapping phase (as `clap_report` would pick them)."""
        if self._seen <= self.noise_samples:
            return []
        bar = self._clap_bar_db()
        shaped = [c for c in self._clap_phase() if c.is_clap and c.level_db >= bar]
        if not shaped:
            return []
        loudest = max(c.level_db for c in shaped)
        return [c for c in shaped if c.level_db >= loudest - CLAP_WINDOW_DB]

    def noise_report(self) -> NoiseReport:
        n = min(self._seen, self.noise_samples)
        sr = self.sample_rate
        levels = self._room_levels()
        floor = self._floor_db()
        s = self.settings
        background = self._background_candidates()
        x = self._noise[min(self._settle, n // 2) : n].astype(np.float64)
        return NoiseReport(
            duration_s=n / sr,
            floor_db=floor,
            level_db=_db(float(np.mean(10.0 ** (levels / 10.0)))) if levels.size else -120.0,
            raw_level_db=_db(float(np.mean(x**2))) if x.size else -120.0,
            upper_db=float(np.percentile(levels, NOISE_PERCENTILE)) - floor if levels.size else 0.0,
            peak_dbfs=_db(float(np.max(np.abs(self._noise[:n]))) ** 2) if n else -120.0,
            transients=len(background),
            # Those the configured detector would have counted as claps.
            clap_like=sum(
                1
                for c in background
                if c.is_clap
                and c.level_db >= floor + s.onset_threshold_db
                and c.level_db >= s.min_level_db
            ),
            early_claps=len(self._split_background()[1]),
            clap_bar_db=self._clap_bar_db(),
        )

    def clap_report(self, asked: int) -> ClapReport:
        claps = self.current_claps()
        clap_samples = max(0, self._seen - self.noise_samples)
        need, bar = self._floor_db() + MIN_CLAP_RISE_DB, self._clap_bar_db()
        return ClapReport(
            asked=asked,
            sample_rate=self.sample_rate,
            duration_s=clap_samples / self.sample_rate,
            claps=tuple(sorted(claps, key=lambda c: c.sample)),
            others=len(self._clap_phase()) - len(claps),
            peak_dbfs=_db(self._clap_peak**2) if clap_samples else -120.0,
            below_bar=sum(1 for c in self._clap_phase() if c.is_clap and need <= c.level_db < bar),
        )


def analyse(
    noise: Iterable[np.ndarray],
    claps: Iterable[np.ndarray],
    settings: ClapSettings,
    sample_rate: int,
    asked: int,
) -> tuple[NoiseReport, ClapReport]:
    """Measure a background recording and the clapping that followed it."""
    noise_audio = np.concatenate([np.asarray(b, np.float32).reshape(-1) for b in noise])
    m = Measurer(settings, sample_rate, noise_audio.size)
    m.push(noise_audio)
    for block in claps:
        m.push(block)
    m.finish()
    return m.noise_report(), m.clap_report(asked)


def propose(
    noise: NoiseReport,
    claps: ClapReport,
    settings: ClapSettings,
    *,
    device: str,
    sample_rate: int,
) -> Proposal:
    """Settings for this room, with the reasoning.

    Onset threshold: the detector starts a clap when a frame is `onset_threshold_db` above
    its floor. The background alone reaches `noise.upper_db` above the floor (its
    99.5th percentile); the softest clap reached `claps.quietest_db - noise.floor_db`.
    The threshold goes halfway between the two (in dB), but no higher than the softest clap minus
    CLAP_SPREAD_DB (claps vary; a softer one next time must still pass) and no lower than
    the background's rise plus NOISE_MARGIN_DB (the room alone must not start claps);
    the background wins when the two conflict. Clamped to ClapSettings' bounds (3-60 dB).

    Gaps: the shortest allowed gap is half the user's shortest gap (echoes and flams are
    far shorter than a deliberate second clap), within 0.08-0.25 s; the longest allowed gap
    is the user's longest gap with 50 % (at least 0.25 s) to spare, within 0.4-2 s; the end
    silence equals it, so a pattern is closed as soon as no further clap could still
    belong to it. With fewer than two claps the settings' own gaps are kept.

    Raises ValueError when no claps were measured (there is nothing to propose).
    """
    if claps.count == 0:
        raise ValueError("no claps were heard")
    if claps.level_db <= noise.floor_db:
        raise ValueError(
            f"the claps ({claps.level_db:.1f} dBFS) were no louder than the background "
            f"({noise.floor_db:.1f} dBFS)"
        )
    warnings: list[str] = []
    notes: list[str] = []
    upper = noise.upper_db
    # Against the measured background rather than each clap's running floor: that is
    # the level the daemon's floor settles at in this room.
    margin = claps.quietest_db - noise.floor_db
    threshold = (upper + margin) / 2.0
    threshold = min(threshold, margin - CLAP_SPREAD_DB)
    threshold = max(threshold, upper + NOISE_MARGIN_DB)
    threshold = _clamp(threshold, 3.0, 60.0)
    notes.append(
        f"onset threshold {threshold:.1f} dB: between the background's own rises "
        f"({upper:.1f} dB above its floor) and the softest clap ({margin:.1f} dB above it)"
    )
    if margin < upper + NOISE_MARGIN_DB + CLAP_SPREAD_DB or margin < MIN_CLAP_MARGIN_DB:
        warnings.append(
            f"the claps stand only {margin:.1f} dB above the background (which itself "
            f"rises {upper:.1f} dB): too noisy for reliable clap detection; clap louder or "
            "closer to the microphone, or calibrate when the room is quieter"
        )
    if noise.floor_db > LOUD_FLOOR_DB:
        warnings.append(
            f"the background is loud ({noise.floor_db:.1f} dBFS): is a fan, TV or music on?"
        )
    if max(noise.peak_dbfs, claps.peak_dbfs) >= CLIP_DBFS:
        warnings.append("the input clipped (reached full scale): lower the microphone gain")
    if noise.early_claps:
        warnings.append(
            f"heard {noise.early_claps} clap-like sound(s) as loud as a clap while measuring "
            "the background (a clap before the prompt?): left out of the measurement; "
            "keep quiet until you are prompted to clap"
        )
    if noise.clap_like > noise.early_claps:
        warnings.append(
            f"heard {noise.clap_like - noise.early_claps} clap-like sound(s) while measuring "
            "the background: the room should be quiet then"
        )
    if claps.count != claps.asked:
        warnings.append(f"asked for {claps.asked} claps but heard {claps.count}")
    if claps.quietest_db < settings.min_level_db:
        # Measured with the level floor off; the daemon keeps it (calibration never lowers
        # what the user allows), so these claps would never count.
        warnings.append(
            f"the softest clap ({claps.quietest_db:.1f} dBFS) is below claps.min_level_db "
            f"({settings.min_level_db:g} dBFS): the daemon would not hear it; raise the "
            "microphone gain, or set claps.min_level_db lower in rules.yaml"
        )

    gaps = claps.gaps_s
    if gaps:
        shortest, longest = min(gaps), max(gaps)
        min_gap = _clamp(0.5 * shortest, *MIN_GAP_BOUNDS)
        max_gap = _clamp(max(1.5 * longest, longest + 0.25), *MAX_GAP_BOUNDS)
        max_gap = max(max_gap, min_gap + 0.1)
        notes.append(
            f"gaps {min_gap:.2f}-{max_gap:.2f} s from your gaps of "
            f"{shortest:.2f}-{longest:.2f} s; a pattern ends after {max_gap:.2f} s of quiet"
        )
        if longest > 1.2:
            warnings.append(
                f"claps up to {longest:.1f} s apart: clap at a steady pace, about half a "
                "second apart, or patterns will be slow to finish"
            )
        end_silence = max(max_gap, min_gap)
    else:
        min_gap, max_gap = settings.min_gap_s, settings.max_gap_s
        end_silence = settings.end_silence_s
        notes.append("only one clap: kept the configured gaps")
    cal = Calibration(
        device=device[:300],
        sample_rate=sample_rate,
        noise_floor_db=round(noise.floor_db, 2),
        clap_level_db=round(claps.level_db, 2),
        onset_threshold_db=round(threshold, 2),
        min_gap_s=round(min_gap, 3),
        max_gap_s=round(max_gap, 3),
        end_silence_s=round(end_silence, 3),
    )
    return Proposal(calibration=cal, warnings=tuple(warnings), notes=tuple(notes))
