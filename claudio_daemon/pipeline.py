"""Audio blocks in, events out: the same code for a live microphone, a replay and the benchmark.

Nothing here does I/O or reads a clock other than the sample counter (time-of-day windows
ask the injected clock, inside the rule engine). Work is gated from cheap to expensive:
every block updates the level meter, the mel buffer and the clap detector (a few FFTs);
the classifier runs only while the level gate says something is sounding.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from claudio_daemon.calibrate.model import CALIBRATED, Calibration, apply_calibration
from claudio_daemon.detect.activity import ActivityGate
from claudio_daemon.detect.listener import ClapListener
from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.events import Action, ClapPattern, Event, LevelReading, SoundEvent
from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.features.logmel import StreamingLogMel
from claudio_daemon.model.classifier import OnnxClassifier
from claudio_daemon.rules.engine import RuleEngine
from claudio_daemon.rules.schema import RulesFile

log = logging.getLogger(__name__)

#: A level reading is reported (MQTT sensor, --json with --levels) this often.
LEVEL_REPORT_S = 5.0
#: The clap count the detector works to when no enabled rule uses claps: AWAY mode still
#: hears clap patterns, and a count of 0 is no way to group them.
NO_RULE_MAX_COUNT = 3


def _max_count(rules: RulesFile) -> int:
    return rules.max_clap_count() or NO_RULE_MAX_COUNT


@dataclass
class PipelineStats:
    """Counters for the service status line and the benchmark."""

    #: Samples fed through `process` (heard, and the silence `finish` adds).
    samples: int = 0
    #: Silence fed by `finish` after the stream ended (counted in `samples`, never heard).
    flushed: int = 0
    #: Audio the source lost (`skip`): not in `samples`, yet time that passed.
    lost: int = 0
    classifications: int = 0
    patterns: int = 0
    sounds: int = 0
    actions: int = 0


class Pipeline:
    """Turns model-rate audio into events (claps, sounds, levels) and rule decisions."""

    def __init__(
        self,
        rules: RulesFile,
        classifier: OnnxClassifier | None,
        *,
        calibration: Calibration | None = None,
        frontend: FrontEndConfig | None = None,
        clock: Callable[[], datetime] | None = None,
        starts_at: datetime | None = None,
    ) -> None:
        """`clock` gives the time of day for `when` windows (the wall clock by default);
        `starts_at` instead makes it the time the audio's first sample stands for, advanced
        by the samples heard, so a replay meets the same windows whenever it is run."""
        if clock is None:
            clock = datetime.now if starts_at is None else self._audio_clock(starts_at)
        self.classifier = classifier
        self.calibration = calibration
        cfg = classifier.frontend if classifier is not None else (frontend or FrontEndConfig())
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.stats = PipelineStats()
        self.mel = StreamingLogMel(cfg) if classifier is not None else None
        # The gate measures the full-band level and finds its own floor within seconds; the
        # calibrated floor is of the high-passed signal, so it tunes the clap detector only.
        self.gate = ActivityGate(cfg.sample_rate)
        self.engine = RuleEngine(rules, cfg.sample_rate, clock=clock)
        self.claps = ClapListener(
            self._clap_settings(rules.claps),
            cfg.sample_rate,
            max_count=_max_count(rules),
            classify=classifier.classify_audio if classifier is not None else None,
        )
        #: Stream sample at which the clap listener started: a listener built on reload
        #: counts from zero, and its patterns are moved back onto the stream's clock.
        self._claps_origin = 0
        if classifier is not None:
            taken = rules.claps.unset_of(classifier.metadata.clap_check)
            if taken:
                log.info(
                    "clap check as measured for model %s: %s",
                    classifier.metadata.model_name,
                    ", ".join(f"{k} {v:g}" for k, v in sorted(taken.items())),
                )
        self._set_thresholds(rules)
        #: Whether the gate was open since the last classification point.
        self._active = False
        #: The model hears full windows only (the input contract): a young stream's window
        #: is mostly digital silence, which no room sounds like, and on it the model
        #: guessed "breathing" at 0.9 for the first half second of a crow or a mouse click.
        #: The first full window is then classified whatever the gate says: the gate takes
        #: the first level it hears for the room's floor, so a sound already going on when
        #: the stream starts (a siren, a vacuum cleaner, a baby crying through a restart)
        #: would never open it, and what sounded while the window filled is heard there.
        self._first_look = True
        #: The gate's recent levels (window end sample, dBFS), as far back as the
        #: classifier's window reaches: a sound event tells how loud the loudest moment the
        #: classifier heard was, not how loud the room is when the model becomes sure (a
        #: point or two after a short sound ended).
        self._levels: deque[tuple[int, float]] = deque()
        #: Where the gate last opened after being shut (a window's start sample): a sound
        #: event's level counts from there, so a quiet sound recognised seconds after a
        #: loud one that still lies in the window does not take the loud one's level
        #: (before the gate first opens: the whole window).
        self._episode_start = -1
        self._gate_open = False
        self._last_reported: dict[str, int] = {}
        self._last_level_report = -(10**12)
        self._level_db = -120.0
        self._floor_db = -120.0
        self._last_bad_report = -(10**12)

    # ------------------------------------------------------------------ configuration

    @property
    def rules(self) -> RulesFile:
        return self.engine.rules

    def _clap_settings(self, settings: ClapSettings) -> ClapSettings:
        written = settings.model_fields_set & set(CALIBRATED)
        if self.classifier is not None:
            settings = settings.with_defaults(self.classifier.metadata.clap_check)
        if self.calibration is None:
            return settings
        if written:
            log.info(
                "calibration: rules.yaml's claps.%s kept over the measured value",
                ", ".join(f"{k} {getattr(settings, k):g}" for k in sorted(written)),
            )
        return apply_calibration(settings, self.calibration, keep=written)

    def _set_thresholds(self, rules: RulesFile) -> None:
        """Lowest score at which each label is worth reporting: a rule may ask for less
        than the default threshold, and so may AWAY mode, but only while it is armed (a
        disarmed house would otherwise publish every faint guess AWAY listens for)."""
        labels = self.classifier.labels if self.classifier is not None else ()
        home = {label: rules.sounds.threshold(label) for label in labels}
        for trig in rules.triggers:
            if trig.enabled and trig.sound in home and trig.min_score is not None:
                home[trig.sound] = min(home[trig.sound], trig.min_score)
        away = dict(home)
        for label in labels:
            if rules.away.counts(label):
                away[label] = min(away[label], rules.away.min_score)
        self._thresholds_home, self._thresholds_away = home, away

    def _audio_clock(self, start: datetime) -> Callable[[], datetime]:
        return lambda: start + timedelta(seconds=self.stream_sample / self.sample_rate)

    def replace_rules(self, rules: RulesFile) -> None:
        """Live reload: keeps AWAY state and cooldowns, and the clap detector with its noise
        floor and any claps in progress unless the clap settings changed (then a fresh one,
        which relearns the floor within a second)."""
        # Compare what the detector would run with, not the files' claps sections: which
        # keys the user wrote decides what the model's clap check fills in, so equal values
        # can mean different settings (an override equal to the built-in default, a deleted
        # one), while the calibration is applied to both sides alike.
        settings = self._clap_settings(rules.claps)
        max_count = _max_count(rules)
        # Everything that can refuse the new file comes before the first change, so a
        # refused reload leaves the old rules running whole.
        fresh = None
        if settings != self.claps.settings:
            # Detector parameters changed: a fresh detector, since its state depends on them.
            fresh = ClapListener(
                settings,
                self.sample_rate,
                max_count=max_count,
                classify=self.claps.classify,
            )
        self.engine.replace_rules(rules)
        self._set_thresholds(rules)
        if fresh is None:
            self.claps.set_max_count(max_count)
        else:
            if self.claps.clapping_may_go_on:
                # The fresh listener starts in the middle of someone's clapping (or just
                # after a hole): the rest of it, heard alone, would be a shorter pattern
                # and another command, so it is taken as clapping that goes on.
                fresh.after_hole()
                log.info("clap settings changed while clapping: that clapping is not counted")
            self.claps = fresh
            self._claps_origin = self.stats.samples

    def set_away(self, armed: bool, source: str) -> list[Event]:
        return self.engine.set_away(armed, source, self.stream_sample)

    @property
    def stream_sample(self) -> int:
        """Now, in samples since the stream started: what was heard and what was lost.
        Every event carries this clock, so cooldowns and AWAY's timing follow real time
        through a hole in the audio."""
        return self.stats.samples + self.stats.lost

    def skip(self, n: int) -> None:
        """The source lost `n` samples here (the loop fell behind the microphone, or the
        device was away for a while).

        Claps are never counted across the hole: a pattern whose middle clap was lost
        would otherwise become a shorter, valid command for another appliance, and claps
        either side would look closer together than they were. Nor do claps just after it
        count (`PatternGrouper.after_hole`). The clap detector starts afresh (it relearns
        the room within a second); the level meter and the mel window simply go on, since
        a splice in a 6 s window misleads neither.
        """
        if n <= 0:
            return
        forgotten = self.claps.after_hole()
        if forgotten:
            log.info(
                "audio lost (%.2f s): the %d clap%s before it not counted",
                n / self.sample_rate,
                forgotten,
                "" if forgotten == 1 else "s",
            )
        self._claps_origin = self.stats.samples
        self.stats.lost += n

    # ------------------------------------------------------------------ processing

    def process(self, samples: np.ndarray) -> list[Event]:
        """Feed the next stretch of audio (any length, at the model rate).

        The classifier runs at fixed points of the stream (every `classify_every_s` of
        audio, when something sounded since the last one), not once a block: the audio is
        cut at those points, so a replay read in other blocks than the sound card's hears
        the same windows and reports the same sounds, at the same samples.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():
            x = self._finite(x)
        out: list[Event] = []
        every = self._classify_every()
        pos = 0
        while pos < x.size:
            point = (self.stats.samples // every + 1) * every
            if self._first_look and self.stats.samples < self.cfg.clip_samples:
                point = min(point, self.cfg.clip_samples)  # the first full window exactly
            take = min(x.size - pos, point - self.stats.samples)
            out += self._process_piece(x[pos : pos + take])
            pos += take
            if self.stats.samples == point:
                if not self._first_look:
                    if self._active:
                        out += self._classify()
                    self._active = False
                elif self.stats.samples == self.cfg.clip_samples:
                    out += self._classify()
                    self._active = self._first_look = False
        self.stats.actions += sum(1 for e in out if isinstance(e, Action))
        return out

    def _classify_every(self) -> int:
        """Samples between classification points: at most half the model's window apart,
        so a short sound just after one point is still inside the window at the next
        (classify_every_s may ask up to 10 s)."""
        every = int(round(self.rules.model.classify_every_s * self.sample_rate))
        return max(1, min(every, self.cfg.clip_samples // 2))

    def finish(self) -> list[Event]:
        """The stream ended (a recording's last sample): decide what is still pending as if
        a quiet room followed. A live stream goes on, so the clap pattern whose end silence
        a file cut off, or a sound in its last moments, would have been reported live; a
        replay must report them too. Silence, fed through the same path, decides them."""
        n = max(self.claps.drain_samples(), self._classify_every() + self.gate.window)
        if self._first_look and self.stats.samples:
            # A recording shorter than the model's window is heard whole, once.
            n = max(n, self.cfg.clip_samples - self.stats.samples + self.gate.window)
        out = self.process(np.zeros(n, dtype=np.float32))
        self.stats.flushed += n
        return out

    def _process_piece(self, x: np.ndarray) -> list[Event]:
        out: list[Event] = []
        for end, level_db, floor_db, is_active in self.gate.push(x):
            self._level_db, self._floor_db = level_db, floor_db
            self._active = self._active or is_active
            if is_active and not self._gate_open:
                self._episode_start = end - self.gate.window
            self._gate_open = is_active
            self._levels.append((end, level_db))
            reading = LevelReading(
                level_db=level_db, noise_floor_db=floor_db, sample=end + self.stats.lost
            )
            # Every window while armed, not only while the gate is open: AWAY's own
            # min_level_db / margin_db may ask for quieter sounds than the gate's limits,
            # and the engine's comparison costs nothing next to the classifier.
            if self.engine.away:
                out += self.engine.handle(reading)
            if end - self._last_level_report >= LEVEL_REPORT_S * self.sample_rate:
                self._last_level_report = end
                out.append(reading)
        while (
            self._levels
            and self._levels[0][0] <= self.stats.samples + x.size - self.cfg.clip_samples
        ):
            self._levels.popleft()
        if self.mel is not None:
            self.mel.push(x)
        for pattern in self.claps.push(x):
            pattern = self._on_stream_clock(pattern)
            self.stats.patterns += 1
            out.append(pattern)
            out += self.engine.handle(pattern)
        self.stats.samples += x.size
        return out

    def _finite(self, x: np.ndarray) -> np.ndarray:
        """A NaN or inf sample (a broken driver, a corrupt float WAV) would poison every
        running level and noise floor for good; it becomes silence instead, and the
        log says so once a minute of audio at most."""
        bad = ~np.isfinite(x)
        if self.stats.samples - self._last_bad_report >= 60 * self.sample_rate:
            self._last_bad_report = self.stats.samples
            log.warning(
                "audio input: %d sample(s) that are not numbers (NaN/inf) from %.2f s on, "
                "treated as silence; is the audio device or file broken?",
                int(bad.sum()),
                (self.stats.samples + int(np.argmax(bad))) / self.sample_rate,
            )
        return np.where(bad, np.float32(0.0), x)

    def _on_stream_clock(self, pattern: ClapPattern) -> ClapPattern:
        """Cooldowns, AWAY timing and event times count samples from the stream start.

        The listener counts from its own start (a reload, a hole in the audio), after every
        loss so far."""
        o = self._claps_origin + self.stats.lost
        if not o:
            return pattern
        return replace(
            pattern,
            clap_samples=tuple(t + o for t in pattern.clap_samples),
            decided_sample=pattern.decided_sample + o,
        )

    def _classify(self) -> list[Event]:
        if self.classifier is None or self.mel is None:
            return []
        now = self.mel.window_end_sample
        self.stats.classifications += 1
        scores = self.classifier.scores(self.mel.window())
        hold = self.rules.sounds.hold_s * self.sample_rate
        thresholds = self._thresholds_away if self.engine.away else self._thresholds_home
        # The episode's first window may have left the deque; those after it never have.
        loudest = max((db for end, db in self._levels if end > self._episode_start), default=-120.0)
        out: list[Event] = []
        for label, score in sorted(scores.items(), key=lambda kv: -kv[1]):
            if score < thresholds.get(label, 1.1):
                continue
            event = SoundEvent(
                label=label, score=score, level_db=loudest, sample=now + self.stats.lost
            )
            last = self._last_reported.get(label)
            self._last_reported[label] = now
            if last is None or now - last >= hold:
                self.stats.sounds += 1
                out.append(event)
            # The engine hears every window, held or not: the hold above counts from the
            # lowest threshold, so a rule or AWAY asking more would miss a sound that
            # scored low first and high after. It holds each rule at its own min_score.
            out += self.engine.handle(event)
        return out

    @property
    def level_db(self) -> float:
        return self._level_db

    @property
    def noise_floor_db(self) -> float:
        return self._floor_db
