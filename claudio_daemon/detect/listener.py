"""The one object the daemon calls per audio block to turn audio into clap patterns.

It chains detector -> grouper -> (optional) classifier veto. Audio is cut into pieces on
the detector's frame grid (counted from the stream start) before anything is decided, so
the patterns and their `decided_sample` are identical whatever block size the sound card
delivers. The raw audio kept for the classifier is a short in-memory ring, never written
anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from claudio_daemon.detect.claps import (
    HOP,
    BusyBackgroundGate,
    ClapCandidate,
    ClapDetector,
    _History,
)
from claudio_daemon.detect.patterns import PatternGrouper
from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.detect.verify import (
    CONTEXT_S,
    ClapVerifier,
    Verdict,
    clap_spans,
    context_spans,
)
from claudio_daemon.events import ClapPattern

log = logging.getLogger(__name__)

Classify = Callable[[np.ndarray], dict[str, float]]


class ClapListener:
    """`push(samples) -> list[ClapPattern]`: accepted patterns decided in this block.

    `decided_sample` of a returned pattern is the stream position at which it could be
    decided (so it includes the detector's measuring delay, an honest latency).
    `classify` receives the pattern's audio at the model rate (first clap minus a margin
    to the decision point, at most last clap plus a margin) and returns label scores; the
    caller pads or trims it to the model's window.
    """

    def __init__(
        self,
        settings: ClapSettings,
        sample_rate: int,
        max_count: int,
        classify: Classify | None = None,
    ) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self.classify = classify
        self.detector = ClapDetector(settings, sample_rate)
        self.grouper = PatternGrouper(settings, sample_rate, max_count)
        self.gate = BusyBackgroundGate(settings, sample_rate)
        self._verifier: ClapVerifier | None = None
        self.set_max_count(max_count)
        self.candidates: list[ClapCandidate] = []
        #: Patterns the classifier rejected, with the reason (kept for logs and tests).
        self.rejected: list[tuple[ClapPattern, Verdict]] = []
        self.reset()

    def set_max_count(self, n: int) -> None:
        self.grouper.set_max_count(n)
        s = self.settings
        # The pattern, the wait for its decision (end silence, or a longer isolation window),
        # its margins, and the second of context before it.
        wait = max(s.end_silence_s, s.isolation_s)
        span = n * s.max_gap_s + wait + 2 * s.classify_margin_s + CONTEXT_S + 1.0
        self._keep = int(span * self.sample_rate)

    def reset(self) -> None:
        self.detector.reset()
        self.grouper.reset()
        self.gate.reset()
        self.ring = _History(self._keep)
        self.position = 0
        self.candidates = []
        self.rejected = []
        #: Last clap of each recent pattern the grouper reported, whatever its verdict: a
        #: pattern's surroundings never reach back into the one before (`context_spans`).
        self._pattern_ends: deque[int] = deque(maxlen=16)

    def after_hole(self) -> int:
        """Audio was lost (`Pipeline.skip`): start afresh, counting from zero, and never
        count claps across the hole. Returns how many claps of a pattern in progress were
        forgotten."""
        forgotten = len(self.grouper.pending)
        self.reset()
        self.grouper.after_hole(0)
        return forgotten

    @property
    def clapping_may_go_on(self) -> bool:
        """Whether claps heard from now on may belong with claps already heard (or lost)."""
        return self.detector.measuring or self.grouper.clapping_may_go_on

    @property
    def noise_floor_db(self) -> float:
        return self.detector.noise_floor_db

    def drain_samples(self) -> int:
        """How much more audio decides every pattern pending now: the longest wait after a
        clap (end silence or isolation window), plus the detector's measuring delay (its
        look-ahead, the high-pass filter's delay and a frame or two of grid)."""
        s = self.settings
        wait = max(s.end_silence_s, s.isolation_s) * self.sample_rate
        delay = self.detector.lookahead + self.detector.delay + 4 * HOP
        return int(wait) + delay

    def push(self, samples: np.ndarray) -> list[ClapPattern]:
        if not self.settings.enabled:
            return []
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if self.ring.keep != self._keep:
            self.ring = self.ring.resized(self._keep)
        out: list[ClapPattern] = []
        i = 0
        while i < x.size:
            # Pieces end where the detector completes a frame (HOP grid shifted by the
            # high-pass delay), so every decision sees exactly the same history.
            n = min(x.size - i, HOP - (self.position - self.detector.delay) % HOP)
            piece = x[i : i + n]
            i += n
            self.ring.append(piece)
            self.position += n
            for cand in self.detector.push(piece):
                self.candidates.append(cand)
                if len(self.candidates) > 256:
                    del self.candidates[:128]
                group = {c.sample for c in self.grouper.pending}
                admitted = self.gate.admit(cand, exclude=group)
                self.grouper.note_transient(cand.sample, cand.level_db)
                if cand.is_clap:
                    push = self.grouper.push_clap if admitted else self.grouper.push_doubtful
                    out.extend(self._decide(push(cand.to_clap())))
            out.extend(self._decide(self.grouper.advance(self.detector.settled_sample)))
        return out

    def _decide(self, patterns: list[ClapPattern]) -> list[ClapPattern]:
        accepted = []
        for p in patterns:
            p = dataclasses.replace(p, decided_sample=self.position)
            self._pattern_ends.append(p.clap_samples[-1])
            counted, verdict = self._verify(p)
            if counted is not None:
                if counted.count != p.count:
                    log.info(
                        "clap pattern of %d counted as %d: %s",
                        p.count,
                        counted.count,
                        verdict.reason,
                    )
                accepted.append(counted)
            else:
                log.info("clap pattern of %d rejected: %s", p.count, verdict.reason)
                self.rejected.append((p, verdict))
                if len(self.rejected) > 64:
                    del self.rejected[:32]
        return accepted

    def segment(self, pattern: ClapPattern) -> np.ndarray:
        """The pattern's audio from the in-memory ring (what `classify` receives).

        It ends at the decision at the latest, not at the current position, so the same
        segment can be had again after the block that decided the pattern (bench/verifier_sweep.py).
        """
        margin = int(self.settings.classify_margin_s * self.sample_rate)
        a = max(self.ring.start, pattern.clap_samples[0] - margin)
        b = min(pattern.decided_sample, pattern.clap_samples[-1] + margin)
        return self.ring.get(a, max(a + 1, b))

    def clap_segments(self, pattern: ClapPattern) -> list[np.ndarray]:
        """Each clap's own audio (`clap_spans`), as the clap check hears it."""
        margin = int(self.settings.classify_margin_s * self.sample_rate)
        spans = clap_spans(pattern.clap_samples, margin, pattern.decided_sample)
        return [self.ring.get(max(a, self.ring.start), b) for a, b in spans]

    def context_segments(self, pattern: ClapPattern) -> dict[str, np.ndarray]:
        """The audio around the pattern that the check compares it with, by side
        (`context_spans`): before it (not before the stream start or into the pattern
        before) and after it until the decision."""
        first = pattern.clap_samples[0]
        margin = int(self.settings.classify_margin_s * self.sample_rate)
        earliest = self.ring.start  # never the silence "before" the stream started
        previous = max((e for e in self._pattern_ends if e < first), default=None)
        if previous is not None:
            earliest = max(earliest, previous + margin)
        spans = context_spans(
            pattern.clap_samples, pattern.decided_sample, earliest, margin, self.sample_rate
        )
        return {side: self.ring.get(a, b) for side, (a, b) in spans.items()}

    def _verify(self, pattern: ClapPattern) -> tuple[ClapPattern | None, Verdict]:
        if self.classify is None or not self.settings.confirm_with_classifier:
            return pattern, Verdict(True, "no classifier")
        scores = self.classify(self.segment(pattern))
        if self._verifier is None:
            self._verifier = ClapVerifier(scores.keys(), self.settings, self.sample_rate)
        classify = self.classify

        def context() -> dict[str, dict[str, float]]:
            return {k: classify(seg) for k, seg in self.context_segments(pattern).items()}

        return self._verifier.check(
            pattern,
            scores,
            lambda: [classify(seg) for seg in self.clap_segments(pattern)],
            context,
        )
