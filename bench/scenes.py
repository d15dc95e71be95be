"""Synthetic but real-sounding clap scenes built from any folder in ESC-50 layout.

Used by the clap tests and the clap benchmark. Single claps are cut out of real
"clapping" recordings and laid out at chosen gaps over real background recordings; the
distractors (knocks, footsteps, speech-like sounds, clicks) and applause come from their
own ESC-50 classes. A seed fixes everything, so a scene set is reproducible.

Conventions:

* All audio is float32 mono at 22,050 Hz (the model rate).
* Every cut event starts `EVENT_PRE_S` before its onset, so ground-truth clap times in a
  scene are the placement sample plus `EVENT_PRE` samples.
* SNR compares like with like, in 20 ms windows: the clap's loudest window
  (`peak_window_db`) over the background's loud moments, the 99th percentile of its window
  levels (`background_level_db`). For steady noise (rain, a vacuum cleaner) that is within
  a dB or two of its RMS level; for an impulsive background (a ticking clock, typing) it is
  the level of the ticks, so "10 dB" means the ticks are 10 dB below the claps rather than
  as loud as them (an RMS measure over mostly silence would put them there). Each clap (or
  the distractor's loudest moment) is scaled to `EVENT_LEVEL_DB` and the background's loud
  moments to `EVENT_LEVEL_DB - snr_db`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr

from claudio_daemon.detect.claps import ClapCandidate, ClapDetector
from claudio_daemon.detect.settings import ClapSettings

# One definition of "how loud" for the benchmark and the synthetic training clips.
from training.synth_claps import (
    HOUSEHOLD_BACKGROUNDS,
    background_level_db,
    burst_at_onset,
    peak_window_db,
)

SAMPLE_RATE = 22050
EVENT_PRE_S = 0.02
EVENT_PRE = int(round(EVENT_PRE_S * SAMPLE_RATE))
EVENT_LEVEL_DB = -20.0
#: The onset finder that cuts the events and picks the applause recordings keeps the
#: look-back it was built with (`ClapDetector`'s `background_frames`), so a change to the
#: detector under test does not change the scenes it is measured on.
CUT_BACKGROUND_FRAMES = 3

BACKGROUNDS = HOUSEHOLD_BACKGROUNDS
#: Distractor classes played whole (a few seconds of the recording).
DISTRACTOR_CLIPS = (
    "footsteps",
    "dog",
    "glass_breaking",
    "coughing",
    "laughing",
    "mouse_click",
    "can_opening",
)


@dataclass(frozen=True)
class Scene:
    audio: np.ndarray
    #: Ground-truth clap onsets (samples); empty for distractors and applause.
    clap_samples: tuple[int, ...]
    #: Pattern the detector should report: N for a clap scene, 0 for "no command".
    count: int
    #: "claps", "applause", "knock_pattern" or a distractor's ESC-50 category.
    kind: str
    snr_db: float = 0.0
    background: str = "none"
    info: dict = field(default_factory=dict)


# --- reading -----------------------------------------------------------------------------


Roots = str | Path | Sequence[str | Path]


def _meta_rows(root: Roots) -> Iterator[tuple[Path, dict[str, str]]]:
    """(folder, row of meta/esc50.csv) for one or several ESC-50 layout folders."""
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    for r in roots:
        r = Path(r)
        meta = r / "meta" / "esc50.csv"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta}: not an ESC-50 layout folder (meta/esc50.csv missing)")
        with meta.open(newline="") as fh:
            for row in csv.DictReader(fh):
                yield r, row


def esc50_clips(root: Roots, category: str, folds: Iterable[int] | None = None) -> list[Path]:
    """Files of one category in one or several ESC-50 layout folders (meta/esc50.csv + audio/)."""
    wanted = None if folds is None else {int(f) for f in folds}
    return sorted(
        r / "audio" / row["filename"]
        for r, row in _meta_rows(root)
        if row["category"] == category and (wanted is None or int(row["fold"]) in wanted)
    )


def esc50_folds(root: Roots) -> list[int]:
    """The folds that one or several ESC-50 layout folders hold."""
    return sorted({int(row["fold"]) for _, row in _meta_rows(root)})


@lru_cache(maxsize=2048)  # all of ESC-50 at 22,050 Hz is under 1 GB
def load_clip(path: Path) -> np.ndarray:
    """A recording as float32 mono at 22,050 Hz (cached: scenes reuse clips)."""
    try:
        from claudio_daemon.audio.io import read_audio
    except ImportError:  # pragma: no cover - the audio helper is optional here
        import soundfile as sf

        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        x = data.mean(axis=1)
    else:
        x, rate = read_audio(path)
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE)
    out = np.ascontiguousarray(x, dtype=np.float32)
    out.setflags(write=False)
    return out


# --- cutting single events ---------------------------------------------------------------


def _onsets(x: np.ndarray) -> list[ClapCandidate]:
    """Every transient of a clean recording, as the scenes were always cut."""
    detector = ClapDetector(ClapSettings(), SAMPLE_RATE, background_frames=CUT_BACKGROUND_FRAMES)
    return detector.push(x)


def cut_events(
    esc50_root: Roots,
    category: str,
    *,
    folds: Iterable[int] | None = None,
    length_s: float = 0.22,
    isolation_s: float = 0.25,
    max_per_clip: int = 4,
) -> list[np.ndarray]:
    """Isolated transients of one class, each starting `EVENT_PRE_S` before its onset.

    The onset comes from the clap detector's onset finder on the clean recording; an event
    is kept only if no other transient lies within `isolation_s` around it (so a cut
    holds exactly one event), it is at least 25 dB above the clip's background and its
    burst at the onset is its loudest moment (`burst_at_onset`).
    Nothing else is asked of it: in particular not the detector's clap-shape test, so a
    benchmark built from these cuts does not only contain claps the detector already likes.
    """
    n_len = int(length_s * SAMPLE_RATE)
    iso = int(isolation_s * SAMPLE_RATE)
    fade_in = int(0.004 * SAMPLE_RATE)
    fade_out = int(0.03 * SAMPLE_RATE)
    out: list[np.ndarray] = []
    for path in esc50_clips(esc50_root, category, folds):
        x = load_clip(path)
        cands = _onsets(np.concatenate([x, np.zeros(SAMPLE_RATE // 2, np.float32)]))
        kept = 0
        for i, c in enumerate(cands):
            if kept >= max_per_clip:
                break
            near = [o for j, o in enumerate(cands) if j != i and abs(o.sample - c.sample) < iso]
            if near or c.level_db - c.floor_db < 25:
                continue
            a = c.sample - EVENT_PRE
            if a < 0 or a + n_len > len(x):
                continue
            seg = np.array(x[a : a + n_len], dtype=np.float32)
            if not burst_at_onset(seg, EVENT_PRE):
                continue
            seg[:fade_in] *= np.linspace(0.0, 1.0, fade_in, dtype=np.float32)
            seg[-fade_out:] *= np.linspace(1.0, 0.0, fade_out, dtype=np.float32)
            out.append(seg)
            kept += 1
    return out


def cut_single_claps(
    esc50_root: Roots, *, folds: Iterable[int] | None = None, length_s: float = 0.22
) -> list[np.ndarray]:
    """Single claps cut from `clapping` recordings (onset at `EVENT_PRE` samples).

    ESC-50 has few clapping clips with isolated claps (most are applause), so up to eight
    are taken from each clip.
    """
    return cut_events(esc50_root, "clapping", folds=folds, length_s=length_s, max_per_clip=8)


def clap_shaped(clap: np.ndarray) -> bool:
    """One transient that the detector's shape test accepts as a clap.

    For tests of the plumbing around the detector (MQTT, the microphone path, calibration),
    which need claps the detector is known to hear; the benchmark itself uses every cut clap.
    """
    silence = np.zeros(SAMPLE_RATE // 2, np.float32)
    padded = np.concatenate([silence, np.asarray(clap, np.float32), silence])
    found = ClapDetector(ClapSettings(), SAMPLE_RATE).push(padded)
    return len(found) == 1 and found[0].is_clap


# --- backgrounds -------------------------------------------------------------------------


def load_backgrounds(
    esc50_root: Roots,
    categories: Sequence[str] = BACKGROUNDS,
    *,
    per_category: int = 3,
    folds: Iterable[int] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """Background recordings that are actually sounding (ESC-50 pads some with silence)."""
    out = []
    for cat in categories:
        found = 0
        for path in esc50_clips(esc50_root, cat, folds):
            x = load_clip(path)
            frames = x[: len(x) // 1024 * 1024].reshape(-1, 1024)
            live = np.mean(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > 1e-4)
            if live < 0.95:
                continue
            out.append((cat, x))
            found += 1
            if found >= per_category:
                break
    return out


def _fit_background(bg: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    reps = int(np.ceil((n + len(bg)) / len(bg)))
    tiled = np.tile(bg, reps)
    start = int(rng.integers(0, len(bg)))
    return np.array(tiled[start : start + n], dtype=np.float64)


def _mix(
    events: Sequence[tuple[int, np.ndarray]],
    n: int,
    background: np.ndarray | None,
    snr_db: float,
    rng: np.random.Generator,
    offsets_db: Sequence[float] | None = None,
) -> np.ndarray:
    """Each event at `EVENT_LEVEL_DB` peak-window level (plus its offset, if given);
    background at `EVENT_LEVEL_DB` - SNR."""
    out = np.zeros(n, dtype=np.float64)
    offsets = [0.0] * len(events) if offsets_db is None else list(offsets_db)
    for (at, ev), off in zip(events, offsets, strict=True):
        gain = 10 ** ((EVENT_LEVEL_DB + off - peak_window_db(ev)) / 20)
        end = min(n, at + len(ev))
        out[at:end] += ev[: end - at] * gain
    if background is not None:
        bg = _fit_background(background, n, rng)
        bg *= 10 ** ((EVENT_LEVEL_DB - snr_db - background_level_db(bg)) / 20)
        out += bg
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# --- scenes ------------------------------------------------------------------------------


def make_pattern_scene(
    claps: Sequence[np.ndarray],
    n: int,
    gaps: Sequence[float],
    background: tuple[str, np.ndarray] | np.ndarray | None,
    snr_db: float,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    *,
    lead_s: float = 1.0,
    tail_s: float = 2.0,
    kind: str = "claps",
    jitter_db: float = 0.0,
) -> Scene:
    """`n` different cut claps at `gaps` (seconds, n-1 of them) over a background.

    With `kind` other than "claps" (e.g. cut knocks), the expected pattern is 0: a
    command must not be heard. `jitter_db` varies each clap's level uniformly by up to
    that much either way (one person's claps are alike, not identical).
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"scenes are built at {SAMPLE_RATE} Hz, got {sample_rate}")
    if len(gaps) != n - 1:
        raise ValueError(f"{n} claps need {n - 1} gaps, got {len(gaps)}")
    bg_name, bg = _split_background(background)
    picks = rng.choice(len(claps), size=n, replace=len(claps) < n)
    starts = [int(lead_s * sample_rate)]
    for g in gaps:
        starts.append(starts[-1] + int(round(g * sample_rate)))
    total = starts[-1] + int(tail_s * sample_rate)
    events = [(s, claps[i]) for s, i in zip(starts, picks, strict=True)]
    offsets = rng.uniform(-jitter_db, jitter_db, size=n) if jitter_db > 0 else None
    audio = _mix(events, total, bg, snr_db, rng, offsets)
    truth = tuple(s + EVENT_PRE for s in starts)
    is_claps = kind == "claps"
    return Scene(
        audio=audio,
        clap_samples=truth if is_claps else (),
        count=n if is_claps else 0,
        kind=kind,
        snr_db=snr_db,
        background=bg_name,
        info={"gaps": tuple(float(g) for g in gaps), "event_samples": truth},
    )


def make_clip_scene(
    clip: np.ndarray,
    kind: str,
    background: tuple[str, np.ndarray] | np.ndarray | None,
    snr_db: float,
    rng: np.random.Generator,
    *,
    lead_s: float = 0.5,
    tail_s: float = 1.5,
    source: str | None = None,
) -> Scene:
    """A whole distractor (or applause) recording over a background: expected count 0.

    `source` names the recording, so a false trigger can be traced to it (one odd
    recording drawn into several scenes is a different finding from a weak class).
    """
    bg_name, bg = _split_background(background)
    at = int(lead_s * SAMPLE_RATE)
    total = at + len(clip) + int(tail_s * SAMPLE_RATE)
    audio = _mix([(at, np.asarray(clip, np.float64))], total, bg, snr_db, rng)
    return Scene(
        audio=audio,
        clap_samples=(),
        count=0,
        kind=kind,
        snr_db=snr_db,
        background=bg_name,
        info={"source": source} if source else {},
    )


def make_applause_scene(
    claps: Sequence[np.ndarray],
    background: tuple[str, np.ndarray] | np.ndarray | None,
    snr_db: float,
    rng: np.random.Generator,
    *,
    duration_s: float = 4.0,
    gap_range: tuple[float, float] = (0.15, 0.4),
    lead_s: float = 1.0,
    jitter_db: float = 0.0,
) -> Scene:
    """Continuous clapping made of cut claps at a lively, slightly irregular rhythm."""
    gaps = []
    t = 0.0
    while t < duration_s:
        g = float(rng.uniform(*gap_range))
        gaps.append(g)
        t += g
    scene = make_pattern_scene(
        claps, len(gaps) + 1, gaps, background, snr_db, rng, lead_s=lead_s, jitter_db=jitter_db
    )
    return Scene(
        audio=scene.audio,
        clap_samples=(),
        count=0,
        kind="applause",
        snr_db=snr_db,
        background=scene.background,
        info=scene.info,
    )


def _split_background(
    background: tuple[str, np.ndarray] | np.ndarray | None,
) -> tuple[str, np.ndarray | None]:
    if background is None:
        return "none", None
    if isinstance(background, tuple):
        return background[0], np.asarray(background[1], np.float64)
    return "custom", np.asarray(background, np.float64)


def applause_clips(
    esc50_root: Roots, *, folds: Iterable[int] | None = None, min_claps: int = 6
) -> list[Path]:
    """`clapping` recordings with many transients (applause or rhythmic clapping)."""
    out = []
    for path in esc50_clips(esc50_root, "clapping", folds):
        cands = _onsets(load_clip(path))
        if len(cands) >= min_claps:
            out.append(path)
    return out


def build_scene_set(
    esc50_root: Roots,
    seed: int,
    n_per_cell: int,
    snrs: Sequence[float] = (20.0, 10.0),
    counts: Sequence[int] = (1, 2, 3, 4),
    *,
    gap_range: tuple[float, float] = (0.2, 0.7),
    distractors: Sequence[str] = DISTRACTOR_CLIPS,
    folds: Iterable[int] | None = None,
    clap_folds: Iterable[int] | None = None,
    lead_s: float = 3.0,
    jitter_db: float = 2.0,
) -> list[Scene]:
    """Clap patterns per (count, SNR), knock patterns, distractors and applause.

    Per SNR: `n_per_cell` scenes for each clap count, for knocks in twos/threes, for each
    distractor class and for applause (half real recordings, half built from cut claps).
    Every scene starts with `lead_s` of background alone (a daemon that has been
    listening to the room for a while, not one switched on a second before the clap);
    claps vary by up to `jitter_db` around their level. `clap_folds` (default: `folds`)
    lets the claps come from other folds than everything else, so a model's false triggers
    can be measured on held-out distractors even where those folds hold no isolated claps.
    """
    rng = np.random.default_rng(seed)
    folds = None if folds is None else tuple(folds)
    clap_folds = folds if clap_folds is None else tuple(clap_folds)
    claps = cut_single_claps(esc50_root, folds=clap_folds)
    knocks = cut_events(esc50_root, "door_wood_knock", folds=folds)
    backgrounds = load_backgrounds(esc50_root, folds=folds)
    if not claps or not backgrounds:
        raise ValueError(f"{esc50_root}: no usable clapping or background recordings found")
    real_applause = applause_clips(esc50_root, folds=folds)
    distractor_clips = {c: esc50_clips(esc50_root, c, folds) for c in distractors}

    def bg() -> tuple[str, np.ndarray]:
        return backgrounds[int(rng.integers(len(backgrounds)))]

    scenes: list[Scene] = []
    for snr in snrs:
        for n in counts:
            for _ in range(n_per_cell):
                gaps = rng.uniform(*gap_range, size=n - 1)
                scenes.append(
                    make_pattern_scene(
                        claps, n, list(gaps), bg(), snr, rng, lead_s=lead_s, jitter_db=jitter_db
                    )
                )
        if knocks:
            for i in range(n_per_cell):
                n = 2 + i % 2
                gaps = rng.uniform(*gap_range, size=n - 1)
                scenes.append(
                    make_pattern_scene(
                        knocks,
                        n,
                        list(gaps),
                        bg(),
                        snr,
                        rng,
                        lead_s=lead_s,
                        jitter_db=jitter_db,
                        kind="knock_pattern",
                    )
                )
        for cat, paths in distractor_clips.items():
            for _ in range(n_per_cell if paths else 0):
                path = paths[int(rng.integers(len(paths)))]
                scenes.append(
                    make_clip_scene(
                        load_clip(path), cat, bg(), snr, rng, lead_s=lead_s, source=path.name
                    )
                )
        for i in range(n_per_cell):
            if i % 2 == 0 and real_applause:
                path = real_applause[int(rng.integers(len(real_applause)))]
                scene = make_clip_scene(
                    load_clip(path), "applause", bg(), snr, rng, lead_s=lead_s, source=path.name
                )
            else:
                scene = make_applause_scene(
                    claps, bg(), snr, rng, lead_s=lead_s, jitter_db=jitter_db
                )
            scenes.append(scene)
    return scenes
