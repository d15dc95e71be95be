"""Second opinion from the sound classifier on a finished clap pattern.

The transient shape cannot tell every knock, click or footstep from a clap (on ESC-50
many mouse clicks and heel steps are as sharp and bright as claps), but the classifier
hears the whole pattern in context. It can reject a pattern in two ways: a veto label
scores at least as high as the clap label (plus `veto_margin`), or the clap label scores
below `min_clap_score` (a model trained on isolated clap patterns gives real commands at
least that). The clap label is `clap_pattern` when the model has it (trained on isolated
clap patterns alone), else ESC-50's `clapping`. It never accepts a pattern the detector
did not find.

Each clap is also heard on its own (`min_single_clap_score`). The whole pattern's audio
cannot tell how many of its transients are claps: three claps over typing, with one
keystroke as loud as they are among them, is four "claps" that still sound like clapping.
A clap whose own audio scores low on every clap label is another sound and is not counted;
the claps that are left must still be a pattern (no gap longer than `max_gap_s`). Counting
fewer can only turn a pattern into a smaller one, never add a clap the detector missed.

And the pattern must sound more like clapping than the audio around it (`min_clap_rise`):
the second before it and the moments after it until the decision. A command stands out of
something else (a quiet room, the television, typing) and is followed by it; two heel
strikes out of a walk, claps at the edge of applause or a cough among coughs come out of
more of the same, which the model hears as clap-like too. The audio before never reaches
back to the claps of the pattern before (a command tried again soon after a missed one is
not a continuation of it); the audio after holds no clap by construction (the end silence
is what decided the pattern), so it costs no latency.

Each of those tests draws a hard line on one score, yet the evidence adds up: over a
vacuum cleaner a real command's pattern may score 0.65 while each clap alone sounds
clearly like a clap and the room around it does not; a can's crack and fizz score 0.8 as a
pattern, but its two "claps" alone sound like something else. So the three are also
weighed together (`min_clap_evidence`): the pattern's clap score, plus its claps' own
average, less the clap score of the audio around it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from claudio_daemon.detect.settings import CLAP_LABELS, ClapSettings
from claudio_daemon.events import ClapPattern

log = logging.getLogger(__name__)

#: How much audio before a pattern belongs to its surroundings (`min_clap_rise`), in
#: seconds, and the least of either side worth asking about (just after start-up or the
#: pattern before there is less before it; a rules.yaml with a short end silence leaves
#: little after it).
CONTEXT_S = 1.0
MIN_CONTEXT_S = 0.3

Scores = Mapping[str, float]


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    #: Human-readable reason, e.g. "door_wood_knock 0.81 > clapping 0.12".
    reason: str
    clap_score: float | None = None
    veto_label: str | None = None
    veto_score: float | None = None


def clap_spans(clap_samples: Sequence[int], margin: int, end: int) -> list[tuple[int, int]]:
    """Where each clap is heard on its own: up to half-way to its neighbours, at most
    `margin` samples either side, and not past `end` (the decision)."""
    spans = []
    for k, c in enumerate(clap_samples):
        last = k + 1 == len(clap_samples)
        before = margin if k == 0 else min(margin, (c - clap_samples[k - 1]) // 2)
        after = margin if last else min(margin, (clap_samples[k + 1] - c) // 2)
        a = c - before
        spans.append((a, max(a + 1, min(end, c + after))))
    return spans


def context_spans(
    clap_samples: Sequence[int], decided: int, earliest: int, margin: int, rate: int
) -> dict[str, tuple[int, int]]:
    """Where a pattern's surroundings lie, by side: "before", `CONTEXT_S` ending `margin`
    before its first clap and starting no earlier than `earliest` (the stream's oldest
    sample still held, or `margin` after the last clap of the pattern before); "after",
    from `margin` after its last clap to the decision. A side shorter than `MIN_CONTEXT_S`
    is left out."""
    b = clap_samples[0] - margin
    a = max(b - int(CONTEXT_S * rate), earliest)
    spans = {"before": (a, b), "after": (clap_samples[-1] + margin, decided)}
    return {k: (a, b) for k, (a, b) in spans.items() if b - a >= int(MIN_CONTEXT_S * rate)}


class ClapVerifier:
    """Accept or reject a pattern from classifier scores (label -> probability)."""

    def __init__(
        self, labels: Iterable[str], settings: ClapSettings, sample_rate: int = 22050
    ) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self.labels = tuple(labels)
        self.clap_label = settings.clap_label_for(self.labels)
        #: What a single clap may score as: the clap label, and ESC-50's applause (one
        #: clap of a command, heard alone, is sometimes more "clapping" than "pattern").
        self.single_clap_labels = tuple(
            lab for lab in (self.clap_label, *CLAP_LABELS) if lab in self.labels
        )
        self.veto_labels = tuple(
            v for v in settings.veto_labels if v in self.labels and v != self.clap_label
        )
        self.active = settings.confirm_with_classifier and self.clap_label in self.labels
        if settings.confirm_with_classifier and not self.active:
            log.warning("clap confirmation off: the model has no %r label", self.clap_label)

    @property
    def checks_each_clap(self) -> bool:
        """Whether `check` wants each clap's own scores."""
        return self.active and self.settings.min_single_clap_score > 0

    @property
    def checks_context(self) -> bool:
        """Whether `check` wants the scores of the audio around the pattern."""
        s = self.settings
        return self.active and (s.min_clap_rise > 0 or s.min_clap_evidence > 0)

    @property
    def weighs_evidence(self) -> bool:
        """Whether `check` weighs the pattern, its claps and its surroundings together."""
        return self.active and self.settings.min_clap_evidence > 0

    def check(
        self,
        pattern: ClapPattern,
        scores: Scores,
        each: Callable[[], Sequence[Scores]] | None = None,
        context: Callable[[], Mapping[str, Scores]] | None = None,
    ) -> tuple[ClapPattern | None, Verdict]:
        """The pattern as counted (None: rejected) and why.

        `scores`: the whole pattern's audio. `each` gives each clap's own (`clap_spans`),
        `context` the scores of the audio around the pattern by side (`context_spans`; a
        side with too little audio is missing); both are called only for a pattern that
        passes as a whole, as they can lower its count or reject it, never accept it. Left
        out, the pattern is judged without them (in the weighed evidence, the pattern's own
        score stands in for its claps', and no surroundings take anything off).
        """
        verdict = self.verify(scores)
        if not verdict.accepted:
            return None, verdict
        around: Mapping[str, Scores] = {}
        if context is not None and self.checks_context:
            around = context()
            if self.settings.min_clap_rise > 0:
                verdict = self._check_context(verdict, around)
                if not verdict.accepted:
                    return None, verdict
        wants_each = self.checks_each_clap or self.weighs_evidence
        own_scores = each() if each is not None and wants_each else None
        if own_scores is not None and len(own_scores) != pattern.count:
            raise ValueError(f"{len(own_scores)} clap scores for a pattern of {pattern.count}")
        if self.weighs_evidence:
            verdict = self._weigh(verdict, own_scores, around)
            if not verdict.accepted:
                return None, verdict
        if own_scores is None or not self.checks_each_clap:
            return pattern, verdict
        others = {}
        for k, own in enumerate(own_scores):
            clap = self._clap_like(own)
            if clap < self.settings.min_single_clap_score:
                top = max(own, key=lambda lab: own[lab])
                others[k] = f"clap {k + 1} sounds like {top} {own[top]:.2f}"
        if not others:
            return pattern, verdict
        kept = tuple(c for k, c in enumerate(pattern.clap_samples) if k not in others)
        why = ", ".join(others.values())
        max_gap = self.settings.max_gap_s * self.sample_rate
        if not kept or any(b - a > max_gap for a, b in zip(kept[:-1], kept[1:], strict=True)):
            return None, Verdict(False, f"no pattern without the other sounds ({why})")
        counted = dataclasses.replace(pattern, count=len(kept), clap_samples=kept)
        reason = f"{verdict.reason}; {len(kept)} of {pattern.count} counted ({why})"
        return counted, dataclasses.replace(verdict, reason=reason)

    def _clap_like(self, scores: Scores) -> float:
        """How much a piece of audio sounds like claps, on any clap label."""
        return max(float(scores.get(lab, 0.0)) for lab in self.single_clap_labels)

    def _most_clap_like(self, around: Mapping[str, Scores]) -> tuple[str | None, float]:
        """The side of the surroundings that sounds most like claps, and how much (None, 0.0
        when none was heard)."""
        side = max(around, key=lambda k: self._clap_like(around[k]), default=None)
        return side, self._clap_like(around[side]) if side is not None else 0.0

    def _check_context(self, verdict: Verdict, around: Mapping[str, Scores]) -> Verdict:
        if not around or verdict.clap_score is None:
            return verdict
        side, was = self._most_clap_like(around)
        rise = self.settings.min_clap_rise
        if verdict.clap_score - was < rise:
            reason = (
                f"{self.clap_label} {verdict.clap_score:.2f} is not {rise:.2f} above the "
                f"audio {side} it ({was:.2f}): more of the same sound"
            )
            return dataclasses.replace(verdict, accepted=False, reason=reason)
        return verdict

    def _weigh(
        self, verdict: Verdict, own: Sequence[Scores] | None, around: Mapping[str, Scores]
    ) -> Verdict:
        """The pattern's clap score, plus its claps' own average (the pattern's score stands
        in when they were not heard), less the most clap-like of its surroundings (none
        heard: nothing taken off)."""
        if verdict.clap_score is None:
            return verdict
        claps = sum(self._clap_like(o) for o in own) / len(own) if own else verdict.clap_score
        side, was = self._most_clap_like(around)
        evidence = verdict.clap_score + claps - was
        need = self.settings.min_clap_evidence
        if evidence >= need:
            return verdict
        where = f" - audio {side} it {was:.2f}" if side is not None else ""
        reason = (
            f"{self.clap_label} {verdict.clap_score:.2f} + claps alone {claps:.2f}{where} = "
            f"{evidence:.2f} < {need:.2f}"
        )
        return dataclasses.replace(verdict, accepted=False, reason=reason)

    def verify(self, scores: Mapping[str, float]) -> Verdict:
        s = self.settings
        if not self.active:
            return Verdict(True, "classifier confirmation inactive")
        name = self.clap_label
        clap = float(scores.get(name, 0.0))
        best_label, best = None, -1.0
        for label in self.veto_labels:
            value = float(scores.get(label, 0.0))
            if value > best:
                best_label, best = label, value
        veto_score = best if best_label is not None else None

        def verdict(accepted: bool, reason: str) -> Verdict:
            return Verdict(accepted, reason, clap, best_label, veto_score)

        if clap < s.min_clap_score:
            return verdict(False, f"{name} {clap:.2f} < {s.min_clap_score:.2f}")
        if best_label is not None and best >= s.veto_min_score and best - clap >= s.veto_margin:
            return verdict(False, f"{best_label} {best:.2f} > {name} {clap:.2f}")
        return verdict(True, f"{name} {clap:.2f}")
