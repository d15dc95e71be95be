"""Hard negatives as the daemon hears them: the clap patterns its detector finds in
recordings that hold no claps, cut exactly as the clap check receives them.

Why: most false clap commands come from sounds with clap-like transients in twos and
threes (a can's click and hiss, a cough, heel steps, a glass). The classifier has heard
these recordings whole, but the clap check hands it only the 1-3 s pattern segment, which
it has rarely seen such sounds as; synthetic clap clips then teach it that a short segment
of isolated transients means "clapping". Mining replays every non-clap recording through
the daemon's own listener (over a household background, as in a room), and every pattern of
2 or more "claps" it reports becomes a clip labelled with the recording's class.

The segment is taken by the listener itself (its `classify` hook), so a change in the
detector or in the margins changes the mined clips the same way it changes what the daemon
classifies. Cross-validation stays honest: a clip inherits its recording's fold, and its
background comes from that fold. Every recording has its own random stream (seed, file
name, pass), so its clips do not depend on which other recordings were given.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from claudio_daemon.detect.listener import ClapListener
from claudio_daemon.detect.settings import ClapSettings
from training.synth_claps import (
    CLAP_CATEGORY,
    CLAP_LEVEL_DB,
    P_NO_BACKGROUND,
    SAMPLE_RATE,
    SNR_RANGE_DB,
    Recording,
    _fold_key,
    finish_mix,
    fold_backgrounds,
    load_22k,
    peak_window_db,
    prepare_out_dir,
    read_recordings,
    write_meta,
)

log = logging.getLogger(__name__)

#: Background alone before the recording: the detector has learnt the room's floor, as a
#: daemon that has been listening for a while has.
LEAD_S = 3.0
TAIL_S = 1.5
#: Patterns the rules can bind to a command (a single clap never is by default).
MIN_COUNT = 2
MAX_COUNT = 4
#: The recording's loudest moment varies this much around the clap level.
LEVEL_JITTER_DB = 6.0


@dataclass(frozen=True)
class MinedPattern:
    audio: np.ndarray
    count: int
    #: Where the segment starts in the replayed stream (samples at 22,050 Hz).
    start: int
    #: Clap times relative to the segment start.
    clap_samples: tuple[int, ...]


@dataclass
class MineReport:
    out_dir: Path
    recordings: int = 0
    #: Recordings in which the detector found at least one pattern, per category.
    triggered: dict[str, int] = field(default_factory=dict)
    clips_per_fold: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        total = sum(self.clips_per_fold.values())
        folds = "; ".join(
            f"fold {f}: {n}"
            for f, n in sorted(self.clips_per_fold.items(), key=lambda kv: _fold_key(kv[0]))
        )
        worst = sorted(self.triggered.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        top = ", ".join(f"{c} {n}" for c, n in worst)
        n_trig = sum(self.triggered.values())
        return (
            f"wrote {total} clips to {self.out_dir} ({folds}); {n_trig} of {self.recordings} "
            f"replays held a pattern (most: {top or 'none'})"
        )


def detected_patterns(
    audio: np.ndarray,
    settings: ClapSettings | None = None,
    *,
    min_count: int = MIN_COUNT,
    max_count: int = MAX_COUNT,
) -> list[MinedPattern]:
    """Every pattern of `min_count`..`max_count` claps the daemon's listener reports in
    `audio`, with the very segment it would hand the classifier."""
    # The hook below is how the segment is taken, so the check must be on; it asks about the
    # whole pattern only (every pattern the detector reports, counted as it reports it, not
    # its claps alone or the audio before it).
    settings = (settings or ClapSettings()).model_copy(
        update={
            "confirm_with_classifier": True,
            "min_single_clap_score": 0.0,
            "min_clap_rise": 0.0,
            "min_clap_evidence": 0.0,
        }
    )
    found: list[MinedPattern] = []

    def capture(segment: np.ndarray) -> dict[str, float]:
        # Called while the pattern is being decided: the ring still holds its audio.
        found.append(MinedPattern(np.asarray(segment, np.float32), 0, 0, ()))
        # Full marks for the clap label the check will ask for, so every pattern passes.
        return {settings.clap_label_for(()): 1.0}

    listener = ClapListener(settings, SAMPLE_RATE, max_count, classify=capture)
    patterns = listener.push(np.concatenate([audio, np.zeros(int(TAIL_S * SAMPLE_RATE))]))
    out = []
    for seg, p in zip(found, patterns, strict=True):
        if min_count <= p.count <= max_count:
            # The listener's own cut: first clap minus the margin, never before the stream.
            start = max(0, p.clap_samples[0] - int(settings.classify_margin_s * SAMPLE_RATE))
            rel = tuple(int(c - start) for c in p.clap_samples)
            out.append(MinedPattern(seg.audio, p.count, start, rel))
    return out


def room_mix(
    event: np.ndarray,
    background: np.ndarray | None,
    snr_db: float,
    level_db: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """`LEAD_S` of background, the recording, `TAIL_S` more: the recording's loudest 20 ms
    at `level_db`, the background's loud moments `snr_db` below it (as bench/scenes.py)."""
    lead, tail = int(LEAD_S * SAMPLE_RATE), int(TAIL_S * SAMPLE_RATE)
    n = lead + len(event) + tail
    out = np.zeros(n, np.float64)
    out[lead : lead + len(event)] = event * 10 ** ((level_db - peak_window_db(event)) / 20)
    start = 0 if background is None else int(rng.integers(len(background)))
    return finish_mix(out, background, start, level_db - snr_db, rng)


def recording_rng(seed: int, name: str, replay: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), replay])


def mine_patterns(
    inputs: Sequence[Path],
    out: Path,
    *,
    seed: int = 0,
    replays: int = 2,
    max_per_recording: int = 2,
    exclude: Sequence[str] = (CLAP_CATEGORY,),
    force: bool = False,
    settings: ClapSettings | None = None,
) -> MineReport:
    """Replay every recording (but `exclude`d classes) `replays` times over a random
    background of its fold and keep up to `max_per_recording` patterns of each replay.

    Writes an ESC-50 layout folder; meta/mined_patterns.json records each clip's source,
    background, SNR and clap times.
    """
    if replays < 1 or max_per_recording < 1:
        raise ValueError(
            f"replays and max_per_recording must be at least 1, got {replays} and "
            f"{max_per_recording}"
        )
    if seed < 0:
        raise ValueError(f"seed must not be negative, got {seed}")
    inputs = [Path(p) for p in inputs]
    recs, columns = read_recordings(inputs)
    prepare_out_dir(out, inputs, force)
    report = MineReport(out_dir=out)
    rows: list[dict[str, str]] = []
    recipes: list[dict[str, object]] = []
    folds = sorted({r.fold for r in recs}, key=_fold_key)
    for fold in folds:
        sources = sorted(
            (r for r in recs if r.fold == fold and r.category not in set(exclude)),
            key=lambda r: r.path.name,
        )
        if not sources:
            continue
        bg_names, backgrounds = fold_backgrounds(recs, fold)
        written = 0
        for k, rec in enumerate(sources):
            audio = load_22k(rec.path)
            for replay in range(replays):
                report.recordings += 1
                kept = _replay(
                    rec, audio, replay, seed, max_per_recording, bg_names, backgrounds, settings
                )
                if kept:
                    report.triggered[rec.category] = report.triggered.get(rec.category, 0) + 1
                for bg_name, snr, pattern in kept:
                    name = f"{fold}-mined{written:05d}-A-{rec.target}.wav"
                    sf.write(out / "audio" / name, pattern.audio, SAMPLE_RATE, subtype="PCM_16")
                    rows.append(_row(rec, columns, name))
                    recipes.append(
                        {
                            "filename": name,
                            "fold": fold,
                            "source": rec.path.name,
                            "replay": replay,
                            "count": pattern.count,
                            "clap_samples": list(pattern.clap_samples),
                            "background": bg_name,
                            "snr_db": None if bg_name is None else round(snr, 2),
                        }
                    )
                    written += 1
            if (k + 1) % 100 == 0:
                log.info("fold %s: %d/%d recordings, %d clips", fold, k + 1, len(sources), written)
        report.clips_per_fold[fold] = written
        log.info("fold %s: %d clips from %d recordings", fold, written, len(sources))
    if not rows:
        raise ValueError("the detector found no clap pattern in any recording; nothing to write")
    write_meta(
        out,
        columns,
        rows,
        "mined_patterns.json",
        {"seed": seed, "replays": replays, "clips": recipes},
    )
    return report


def _replay(
    rec: Recording,
    audio: np.ndarray,
    replay: int,
    seed: int,
    max_per_recording: int,
    bg_names: Sequence[str],
    backgrounds: Sequence[np.ndarray],
    settings: ClapSettings | None,
) -> list[tuple[str | None, float, MinedPattern]]:
    """One replay of one recording: its random choices are drawn in a fixed order."""
    rng = recording_rng(seed, rec.path.name, replay)
    silent = rng.random() < P_NO_BACKGROUND or not backgrounds
    bg = None if silent else int(rng.integers(len(backgrounds)))
    snr = float(rng.uniform(*SNR_RANGE_DB))
    level = CLAP_LEVEL_DB + float(rng.uniform(-LEVEL_JITTER_DB, LEVEL_JITTER_DB))
    mix = room_mix(audio, None if bg is None else backgrounds[bg], snr, level, rng)
    found = detected_patterns(mix, settings)
    if len(found) > max_per_recording:
        pick = sorted(rng.choice(len(found), size=max_per_recording, replace=False))
        found = [found[int(i)] for i in pick]
    return [(None if bg is None else bg_names[bg], snr, p) for p in found]


def _row(rec: Recording, columns: Sequence[str], name: str) -> dict[str, str]:
    row = {c: rec.row.get(c, "") for c in columns}
    row.update(filename=name, fold=rec.fold, target=str(rec.target), category=rec.category)
    # src_file and take stay the recording's: a mined clip is a piece of it.
    return row
