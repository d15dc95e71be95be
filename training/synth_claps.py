"""Synthetic clap-pattern clips in ESC-50 layout: what the daemon hands the classifier.

Why: ESC-50's `clapping` recordings are mostly applause, so a model trained on them calls
two or three isolated claps footsteps, a dog or a can opening, and the daemon's clap veto
then rejects real commands. These clips teach it the isolated pattern: 1-4 real claps
(cut from the `clapping` recordings) at command-like gaps over a real background, spanning
0.3 s before the first clap to the end of the last one's 0.22 s cut plus 0.3 s (training
repeat-pads it to the 5.94 s window, as the daemon does). That is 0.22 s longer than the
segment `classify_audio` receives (0.3 s after the last clap's onset, `listener.segment`),
so the repeat period differs from the daemon's by that much, while the mined hard
negatives have the daemon's exact cut. The shipped model was trained on these clips; a clip
the daemon's length is a recipe change to measure on held-out folds first (models/README.md).

Cross-validation stays honest: every synthetic clip takes its claps and its background
from one fold and is listed under that fold. A seed fixes everything; each fold draws
from its own stream, so a fold's clips do not depend on which other folds were given.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from claudio_daemon.audio.io import read_audio
from claudio_daemon.detect.claps import ClapDetector
from claudio_daemon.detect.settings import ClapSettings
from training.datasets.base import Problems, read_csv_rows

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050
#: Where single claps are cut from (ESC-50's clapping, mostly applause).
CLAP_CATEGORY = "clapping"
#: What the clips are listed as by default: a label of their own, so the model learns
#: "a clap command" apart from applause (the daemon's clap check asks for it).
PATTERN_LABEL = "clap_pattern"
#: The backgrounds the clap benchmark mixes claps over (bench/scenes.py uses this list).
HOUSEHOLD_BACKGROUNDS: tuple[str, ...] = (
    "rain",
    "wind",
    "vacuum_cleaner",
    "washing_machine",
    "crickets",
    "clock_tick",
    "keyboard_typing",
)
#: Steady or busy backgrounds for training clips: the benchmark's and a few more;
#: deliberately no alarms, speech or animals.
BACKGROUND_CATEGORIES: tuple[str, ...] = HOUSEHOLD_BACKGROUNDS + (
    "engine",
    "airplane",
    "sea_waves",
    "crackling_fire",
    "insects",
)
META = Path("meta") / "esc50.csv"
REQUIRED_COLUMNS = ("filename", "fold", "target", "category")

# --- single clap cuts --------------------------------------------------------------------
CUT_S = 0.22
#: A cut starts this long before the detected onset, so the attack is whole.
PRE_S = 0.02
ISOLATION_S = 0.25
MIN_ABOVE_FLOOR_DB = 25.0
WINDOW_S = 0.02
#: The burst at the onset may be at most this much quieter than the cut's loudest moment.
MAX_ONSET_DEFICIT_DB = 3.0
FADE_IN_S = 0.004
FADE_OUT_S = 0.03
MAX_CUTS_PER_RECORDING = 8

# --- clip plan ---------------------------------------------------------------------------
CONTEXT_S = 0.3
MIN_CLAPS, MAX_CLAPS = 1, 4
GAP_RANGE_S = (0.2, 0.7)
CLAP_LEVEL_DB = -20.0
JITTER_DB = 3.0
SNR_RANGE_DB = (5.0, 30.0)
P_NO_BACKGROUND = 0.25
NOISE_DBFS = -70.0
#: Peak limit: 16-bit PCM cannot hold +1.0, and a clipped clap would teach distortion.
PEAK_LIMIT = 0.99
#: ESC-50 pads short recordings with digital silence; frames below this RMS are not sound.
LIVE_RMS = 1e-4
MIN_BACKGROUND_S = 0.5


def _n(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


@dataclass(frozen=True)
class Recording:
    path: Path
    fold: str
    category: str
    target: int
    row: dict[str, str]


@dataclass(frozen=True)
class SingleClap:
    audio: np.ndarray
    source: str


@dataclass
class SynthReport:
    out_dir: Path
    clips_per_fold: dict[str, int] = field(default_factory=dict)
    claps_per_fold: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        folds = sorted(set(self.clips_per_fold) | set(self.claps_per_fold), key=_fold_key)
        parts = [
            f"fold {f}: {self.clips_per_fold.get(f, 0)} clips from "
            f"{self.claps_per_fold.get(f, 0)} single claps"
            for f in folds
        ]
        total = sum(self.clips_per_fold.values())
        return f"wrote {total} clips to {self.out_dir} (" + "; ".join(parts) + ")"


def _fold_key(fold: str) -> tuple[int, str]:
    return (int(fold), "") if fold.isdigit() else (1 << 30, fold)


# --- levels --------------------------------------------------------------------------------


def window_energies(x: np.ndarray, hop: int = 1) -> np.ndarray:
    """Mean power of every 20 ms window (starting every `hop` samples)."""
    n = _n(WINDOW_S)
    p = np.asarray(x, np.float64) ** 2
    if p.size < n:
        return np.array([p.mean() if p.size else 0.0])
    c = np.concatenate([[0.0], np.cumsum(p)])
    return ((c[n:] - c[:-n]) / n)[::hop]


def _db(power: float) -> float:
    return float(10.0 * np.log10(max(power, 1e-20)))


def peak_window_db(x: np.ndarray) -> float:
    """How loud a clap is: its loudest 20 ms window."""
    return _db(float(window_energies(x).max()))


def background_level_db(x: np.ndarray) -> float:
    """How loud a background's loud moments are: 99th percentile of its 20 ms windows.

    For steady noise that is close to its RMS; for ticks or typing it is the level of the
    ticks, so "10 dB SNR" means ticks 10 dB below the claps, not averaged into silence.
    """
    return _db(float(np.percentile(window_energies(x, hop=_n(WINDOW_S) // 2), 99)))


# --- cutting single claps ------------------------------------------------------------------


def burst_at_onset(cut: np.ndarray, pre: int) -> bool:
    """The transient at the onset is the cut's main event, not a faint precursor.

    In applause a contact click or a neighbour's clap often precedes the loud clap by
    40-80 ms and the onset lands on it; such a cut would be scaled by a later burst.
    """
    w = window_energies(cut)
    near = w[max(0, pre - _n(0.005)) : pre + _n(0.03) + 1]
    if near.size == 0:
        return False
    return _db(float(w.max())) - _db(float(near.max())) <= MAX_ONSET_DEFICIT_DB


def isolated_onsets(audio: np.ndarray, min_above_floor_db: float = MIN_ABOVE_FLOOR_DB) -> list[int]:
    """Onsets of transients that are alone, well above the background and the loudest part
    of their own cut: one clap per cut, whatever the recording around it does."""
    det = ClapDetector(ClapSettings(), SAMPLE_RATE)
    # Trailing silence lets the detector settle the candidates near the end.
    cands = det.push(np.concatenate([audio, np.zeros(_n(0.5), np.float32)]))
    iso = _n(ISOLATION_S)
    pre, length = _n(PRE_S), _n(CUT_S)
    out = []
    for i, c in enumerate(cands):
        if any(j != i and abs(o.sample - c.sample) < iso for j, o in enumerate(cands)):
            continue
        if c.level_db - c.floor_db < min_above_floor_db:
            continue
        a = c.sample - pre
        if a < 0 or a + length > len(audio):
            continue
        if burst_at_onset(audio[a : a + length], pre):
            out.append(int(c.sample))
    return out


def cut_clap(audio: np.ndarray, onset: int) -> np.ndarray:
    """0.22 s from 20 ms before the onset, faded so it adds into a mix without clicks."""
    a = onset - _n(PRE_S)
    seg = np.array(audio[a : a + _n(CUT_S)], dtype=np.float64)
    fi, fo = _n(FADE_IN_S), _n(FADE_OUT_S)
    seg[:fi] *= np.linspace(0.0, 1.0, fi)
    seg[-fo:] *= np.linspace(1.0, 0.0, fo)
    return seg


def single_claps(
    audio: np.ndarray, source: str, min_above_floor_db: float = MIN_ABOVE_FLOOR_DB
) -> list[SingleClap]:
    onsets = isolated_onsets(audio, min_above_floor_db)[:MAX_CUTS_PER_RECORDING]
    return [SingleClap(cut_clap(audio, o), source) for o in onsets]


# --- building a clip -----------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPlan:
    claps: tuple[int, ...]
    gaps_s: tuple[float, ...]
    jitter_db: tuple[float, ...]
    #: Index into the fold's background list; None: near-silence.
    background: int | None
    snr_db: float
    background_offset: float

    @property
    def n_samples(self) -> int:
        return _n(2 * CONTEXT_S + CUT_S) + sum(_n(g) for g in self.gaps_s)


def draw_plan(rng: np.random.Generator, n_claps_available: int, n_backgrounds: int) -> ClipPlan:
    """All random choices of one clip, drawn in a fixed order."""
    count = int(rng.integers(MIN_CLAPS, MAX_CLAPS + 1))
    claps = rng.choice(n_claps_available, size=count, replace=n_claps_available < count)
    gaps = rng.uniform(*GAP_RANGE_S, size=count - 1)
    jitter = rng.uniform(-JITTER_DB, JITTER_DB, size=count)
    silent = rng.random() < P_NO_BACKGROUND or n_backgrounds == 0
    bg = None if silent else int(rng.integers(n_backgrounds))
    snr = float(rng.uniform(*SNR_RANGE_DB))
    offset = float(rng.random())
    return ClipPlan(
        claps=tuple(int(c) for c in claps),
        gaps_s=tuple(float(g) for g in gaps),
        jitter_db=tuple(float(j) for j in jitter),
        background=bg,
        snr_db=snr,
        background_offset=offset,
    )


def live_span(x: np.ndarray) -> np.ndarray:
    """The recording without ESC-50's leading/trailing digital-silence padding."""
    frame = 1024
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(np.asarray(x[: n * frame], np.float64).reshape(n, frame) ** 2, axis=1))
    live = np.nonzero(rms > LIVE_RMS)[0]
    if live.size == 0:
        return x[:0]
    return x[live[0] * frame : (live[-1] + 1) * frame]


def render(
    plan: ClipPlan,
    claps: Sequence[SingleClap],
    backgrounds: Sequence[np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Mix the plan: claps at the common level (+ jitter), background at level - SNR."""
    n = plan.n_samples
    out = np.zeros(n, np.float64)
    at = _n(CONTEXT_S) - _n(PRE_S)  # the first onset lands CONTEXT_S into the clip
    for k, (idx, jit) in enumerate(zip(plan.claps, plan.jitter_db, strict=True)):
        if k:
            at += _n(plan.gaps_s[k - 1])
        c = claps[idx].audio
        gain = 10 ** ((CLAP_LEVEL_DB + jit - peak_window_db(c)) / 20)
        end = min(n, at + len(c))
        out[at:end] += c[: end - at] * gain
    bg = None if plan.background is None else backgrounds[plan.background]
    start = 0 if bg is None else int(plan.background_offset * len(bg))
    return finish_mix(out, bg, start, CLAP_LEVEL_DB - plan.snr_db, rng)


def finish_mix(
    out: np.ndarray,
    background: np.ndarray | None,
    start: int,
    background_db: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add the background (tiled from `start`, its loud moments at `background_db`) or
    near-silence to a mix of events, and keep the peak below full scale."""
    n = len(out)
    if background is None:
        out += rng.standard_normal(n) * 10 ** (NOISE_DBFS / 20)
    else:
        seg = np.tile(background, -(-(start + n) // len(background)))[start : start + n]
        # Level from the whole live recording: a quiet stretch is not blown up to "SNR".
        out += seg * 10 ** ((background_db - background_level_db(background)) / 20)
    peak = float(np.max(np.abs(out)))
    if peak > PEAK_LIMIT:
        out *= PEAK_LIMIT / peak
    return out.astype(np.float32)


# --- dataset in, dataset out ---------------------------------------------------------------


def read_recordings(roots: Sequence[Path]) -> tuple[list[Recording], list[str]]:
    """Every row of the given ESC-50 folders, and the union of their CSV columns.

    Read as `precache` reads them (`read_csv_rows`): a UTF-8 BOM (Excel) is accepted and
    every problem names the file, line and column, all of them at once.
    """
    recs: list[Recording] = []
    columns: list[str] = []
    problems = Problems()
    for root in roots:
        meta = Path(root) / META
        if not meta.is_file():
            raise FileNotFoundError(f"{meta}: not an ESC-50 layout folder (meta/esc50.csv)")
        for line, row in read_csv_rows(meta, REQUIRED_COLUMNS, problems):
            columns += [c for c in row if c not in columns]
            empty = [c for c in ("filename", "fold", "category") if not row[c]]
            for col in empty:
                problems.add(meta, line, "empty value", col)
            try:
                target = int(row["target"])
            except ValueError:
                problems.add(meta, line, f"target {row['target']!r} is not an integer", "target")
                continue
            if empty:
                continue
            recs.append(
                Recording(
                    path=Path(root) / "audio" / row["filename"],
                    fold=row["fold"],
                    category=row["category"],
                    target=target,
                    row=row,
                )
            )
    problems.raise_if_any("ESC-50 metadata")
    return recs, columns


def load_22k(path: Path) -> np.ndarray:
    x, rate = read_audio(path)
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE)
    return np.asarray(x, np.float32)


def label_target(recs: Sequence[Recording], label: str) -> int:
    """ESC-50 layout wants an integer target per label: the inputs' own for one of their
    categories, else the next free one (so the new label sorts after theirs)."""
    targets = {r.target for r in recs if r.category == label}
    if len(targets) > 1:
        raise ValueError(f"the input folders disagree on the target of {label}: {targets}")
    if targets:
        return targets.pop()
    return max((r.target for r in recs), default=-1) + 1


def prepare_out_dir(out: Path, inputs: Sequence[Path], force: bool) -> None:
    out_r = out.resolve()
    for root in inputs:
        r = Path(root).resolve()
        if out_r == r or r in out_r.parents or out_r in r.parents:
            raise ValueError(f"{out}: the output folder must not overlap input folder {root}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out}: folder is not empty; pass --force to overwrite it")
        log.info("--force: replacing %s", out)
        shutil.rmtree(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "meta").mkdir(parents=True, exist_ok=True)


def fold_rng(seed: int, fold: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(fold.encode())])


def synth_claps(
    inputs: Sequence[Path],
    out: Path,
    *,
    per_fold: int = 60,
    seed: int = 0,
    force: bool = False,
    min_above_floor_db: float = MIN_ABOVE_FLOOR_DB,
    label: str = PATTERN_LABEL,
) -> SynthReport:
    """Write `per_fold` clap-pattern clips, listed as `label`, for every fold that has
    usable single claps.

    Besides meta/esc50.csv, meta/synth_claps.json records each clip's recipe (clap and
    background sources, gaps, SNR), so a clip can be traced back to its fold's recordings.
    """
    if per_fold < 1:
        raise ValueError(f"per_fold must be at least 1, got {per_fold}")
    if seed < 0:
        raise ValueError(f"seed must not be negative, got {seed}")
    inputs = [Path(p) for p in inputs]
    if not label.strip() or "," in label:
        raise ValueError(f"label must be a non-empty name without commas, got {label!r}")
    recs, columns = read_recordings(inputs)
    if not any(r.category == CLAP_CATEGORY for r in recs):
        raise ValueError(f"no {CLAP_CATEGORY!r} recordings in the input folders")
    target = label_target(recs, label)
    prepare_out_dir(out, inputs, force)
    report = SynthReport(out_dir=out)
    rows: list[dict[str, str]] = []
    recipes: list[dict[str, object]] = []
    folds = sorted({r.fold for r in recs if r.category == CLAP_CATEGORY}, key=_fold_key)
    for fold in folds:
        sources = sorted(
            (r for r in recs if r.fold == fold and r.category == CLAP_CATEGORY),
            key=lambda r: r.path.name,
        )
        claps: list[SingleClap] = []
        source_rows: list[dict[str, str]] = []
        for r in sources:
            cut = single_claps(load_22k(r.path), r.path.name, min_above_floor_db)
            claps += cut
            source_rows += [r.row] * len(cut)
        report.claps_per_fold[fold] = len(claps)
        log.info("fold %s: %d single claps from %d recordings", fold, len(claps), len(sources))
        if not claps:
            log.warning("fold %s: no isolated claps found; no clips for this fold", fold)
            continue
        names, backgrounds = fold_backgrounds(recs, fold)
        rng = fold_rng(seed, fold)
        for i in range(per_fold):
            plan = draw_plan(rng, len(claps), len(backgrounds))
            audio = render(plan, claps, backgrounds, rng)
            name = f"{fold}-synthclap{i:04d}-A-{target}.wav"
            sf.write(out / "audio" / name, audio, SAMPLE_RATE, subtype="PCM_16")
            row = {c: source_rows[plan.claps[0]].get(c, "") for c in columns}
            row.update(filename=name, fold=fold, target=str(target), category=label)
            if "src_file" in row:
                row["src_file"] = f"synthclap{fold}{i:04d}"
            if "take" in row:
                row["take"] = "A"
            rows.append(row)
            recipes.append(_recipe(name, fold, plan, claps, names))
        report.clips_per_fold[fold] = per_fold
        log.info("fold %s: wrote %d clips", fold, per_fold)
    if not rows:
        raise ValueError("no isolated single claps found in any clapping recording")
    write_meta(out, columns, rows, "synth_claps.json", {"seed": seed, "clips": recipes})
    return report


def write_meta(
    out: Path,
    columns: Sequence[str],
    rows: Sequence[dict[str, str]],
    recipe_file: str,
    recipes: dict[str, object],
) -> None:
    """meta/esc50.csv for the loaders, and a JSON file that traces every clip to its sources."""
    with (out / META).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / "meta" / recipe_file).write_text(json.dumps(recipes, indent=1, sort_keys=True) + "\n")


def _recipe(
    name: str, fold: str, plan: ClipPlan, claps: Sequence[SingleClap], bg_names: Sequence[str]
) -> dict[str, object]:
    return {
        "filename": name,
        "fold": fold,
        "claps": [claps[i].source for i in plan.claps],
        "gaps_s": [round(g, 4) for g in plan.gaps_s],
        "background": None if plan.background is None else bg_names[plan.background],
        "snr_db": None if plan.background is None else round(plan.snr_db, 2),
    }


def fold_backgrounds(recs: Sequence[Recording], fold: str) -> tuple[list[str], list[np.ndarray]]:
    """The fold's background recordings (names, live audio), in a fixed order."""
    names, audio = [], []
    for r in sorted(
        (r for r in recs if r.fold == fold and r.category in BACKGROUND_CATEGORIES),
        key=lambda r: r.path.name,
    ):
        x = live_span(load_22k(r.path))
        if len(x) >= _n(MIN_BACKGROUND_S):
            names.append(r.path.name)
            audio.append(x)
    if not audio:
        log.warning("fold %s: no background recordings; every clip gets near-silence", fold)
    else:
        log.info("fold %s: %d background recordings", fold, len(audio))
    return names, audio
