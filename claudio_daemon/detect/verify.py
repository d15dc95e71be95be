"""Second opinion from the sound classifier on a finished clap pattern.

The transient shape cannot tell every knock, click or footstep from a clap (on ESC-50
many mouse clicks and heel steps are as sharp and bright as claps), but the classifier
hears the whole pattern in context. It can reject a pattern in two ways: a veto label
scores at least as high as the clap label (plus `veto_margin`), or the clap label scores
below `min_clap_score` (a model trained on isolated clap patterns gives real commands at
least that). The clap label is `clap_pattern` when the model has it (trained on isolated
clap patterns alone), else ESC-50's `clapping`. It never accepts a pattern the detector
did not find.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from claudio_daemon.detect.settings import ClapSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    #: Human-readable reason, e.g. "door_wood_knock 0.81 > clapping 0.12".
    reason: str
    clap_score: float | None = None
    veto_label: str | None = None
    veto_score: float | None = None


class ClapVerifier:
    """Accept or reject a pattern from classifier scores (label -> probability)."""

    def __init__(self, labels: Iterable[str], settings: ClapSettings) -> None:
        self.settings = settings
        self.labels = tuple(labels)
        self.clap_label = settings.clap_label_for(self.labels)
        self.veto_labels = tuple(
            v for v in settings.veto_labels if v in self.labels and v != self.clap_label
        )
        self.active = settings.confirm_with_classifier and self.clap_label in self.labels
        if settings.confirm_with_classifier and not self.active:
            log.warning("clap confirmation off: the model has no %r label", self.clap_label)

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
