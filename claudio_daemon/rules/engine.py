"""Decide what to switch: detector events in, Actions / Alerts / ModeChanges out.

Pure logic: no I/O, no threads, no wall clock for durations. Cooldowns and the AWAY arm
delay are counted in samples of the event stream, so a replayed recording fires exactly
as the live run did. The wall clock is asked only for the time of day that `when` windows
refer to; a replay passes a fixed clock.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from claudio_daemon.events import (
    Action,
    Alert,
    ClapPattern,
    Command,
    Event,
    LevelReading,
    ModeChange,
    SoundEvent,
)
from claudio_daemon.rules.schema import CLAP_LABEL, RulesFile, Trigger

log = logging.getLogger(__name__)


def _trigger_keys(rules: RulesFile) -> list[str]:
    """A key per trigger that survives a reload as long as the trigger is unchanged.

    Content, not position: inserting a rule above must not reset the others' cooldowns.
    Identical triggers get an occurrence number so they keep separate clocks.
    """
    seen: Counter[str] = Counter()
    keys = []
    for trig in rules.triggers:
        body = trig.model_dump_json()
        keys.append(f"{body}#{seen[body]}")
        seen[body] += 1
    return keys


class RuleEngine:
    """Matches events against rules.yaml and keeps AWAY mode and cooldown state."""

    def __init__(
        self,
        rules: RulesFile,
        sample_rate: int,
        clock: Callable[[], datetime] = datetime.now,
    ):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._sr = sample_rate
        self._clock = clock
        self._rules = rules
        self._keys = _trigger_keys(rules)
        self._last_fired: dict[str, int] = {}
        # Last sample at which each sound trigger (by key) heard its sound at its own
        # min_score: within `sounds.hold_s` of it, the same sound is still going on.
        self._heard: dict[str, int] = {}
        # The same for AWAY, by label at away.min_score: with cooldown_s 0 a bark is one
        # alert, not one per classification.
        self._away_heard: dict[str, int] = {}
        # Armed from the file at start counts as armed at sample 0: the arm delay still
        # applies, so a restart while someone is home does not alert at once.
        self._armed = rules.away.armed
        self._armed_at = 0
        self._away_last: int | None = None

    # ----------------------------------------------------------------- state

    @property
    def rules(self) -> RulesFile:
        return self._rules

    @property
    def away(self) -> bool:
        """AWAY mode armed (alerts may still wait for the arm delay)."""
        return self._armed

    def away_active(self, sample: int) -> bool:
        """Armed and the arm delay has passed at `sample`."""
        return self._armed and sample >= self._armed_at + self._samples(
            self._rules.away.arm_delay_s
        )

    def set_away(self, armed: bool, source: str, sample: int) -> list[Event]:
        """Arm or disarm. Always reports the resulting mode (so MQTT state is re-published);
        arming again while armed does not restart the arm delay."""
        if armed and not self._armed:
            self._armed_at = sample
            self._away_last = None
        self._armed = armed
        return [ModeChange(away=armed, source=source, sample=sample)]

    def replace_rules(self, new_rules: RulesFile) -> None:
        """Live reload: keep AWAY state and the cooldown clocks of unchanged triggers.

        `away.armed` in the new file is ignored: it is the state at start only, and a reload
        must not disarm a house someone has left.
        """
        keys = _trigger_keys(new_rules)
        keep = set(keys)
        self._last_fired = {k: v for k, v in self._last_fired.items() if k in keep}
        self._heard = {k: v for k, v in self._heard.items() if k in keep}
        self._rules = new_rules
        self._keys = keys

    # ----------------------------------------------------------------- events

    def handle(self, event: Event) -> list[Event]:
        """Rule actions first, then AWAY's alert and ON actions (so ON wins over a toggle)."""
        if isinstance(event, ClapPattern):
            out = self._fire(event.sample, lambda t: t.claps == event.count)
            if self._rules.away.counts(CLAP_LABEL):
                out += self._away_alert(event.sample, CLAP_LABEL, None, event.level_db)
            return out
        if isinstance(event, SoundEvent):
            # The pipeline hands over every classification that reaches some threshold,
            # published or held. A rule fires on the first that reaches its min_score, and
            # a sound that goes on stays one firing (even with cooldown_s 0); AWAY has its
            # cooldown, as for level readings.
            out = self._fire(
                event.sample,
                lambda t: t.sound == event.label and event.score >= self._min_score(t),
                sound=True,
            )
            away = self._rules.away
            if (
                away.counts(event.label)
                and event.score >= away.min_score
                and self._away_heard_anew(event.label, event.sample)
            ):
                out += self._away_alert(event.sample, event.label, event.score, event.level_db)
            return out
        if isinstance(event, LevelReading):
            threshold = self._rules.away.level_threshold(event.noise_floor_db)
            if threshold is not None and event.level_db >= threshold:
                return self._away_alert(event.sample, None, None, event.level_db)
            return []
        return []

    def _fire(
        self,
        sample: int,
        matches: Callable[[Trigger], bool],
        sound: bool = False,
    ) -> list[Event]:
        out: list[Event] = []
        now = None
        for key, trig in zip(self._keys, self._rules.triggers, strict=True):
            if not trig.enabled or not matches(trig):
                continue
            if sound and not self._heard_anew(key, sample):
                continue
            if trig.when:
                now = now or self._clock()
                if not trig.active_at(now.time()):
                    continue
            last = self._last_fired.get(key)
            if last is not None and sample - last < self._samples(trig.cooldown_s):
                continue
            self._last_fired[key] = sample
            reason = trig.reason
            log.debug("%s fired at sample %d", trig.name or reason, sample)
            out += [self._action(a.appliance, a.command, sample, reason) for a in trig.actions]
        return out

    def _away_alert(
        self, sample: int, label: str | None, score: float | None, level_db: float
    ) -> list[Event]:
        away = self._rules.away
        if not self.away_active(sample):
            return []
        if self._away_last is not None and sample - self._away_last < self._samples(
            away.cooldown_s
        ):
            return []
        self._away_last = sample
        out: list[Event] = []
        if away.alert:
            out.append(Alert(label=label, score=score, level_db=level_db, sample=sample))
        out += [self._action(name, "on", sample, "away") for name in away.actions]
        return out

    # ----------------------------------------------------------------- helpers

    def _heard_anew(self, key: str, sample: int, heard: dict[str, int] | None = None) -> bool:
        """Record that trigger `key` heard its sound at `sample`; False while it is the same
        sound going on (heard less than `sounds.hold_s` before): a minute's bark is one."""
        heard = self._heard if heard is None else heard
        last = heard.get(key)
        heard[key] = sample
        return last is None or sample - last >= self._samples(self._rules.sounds.hold_s)

    def _away_heard_anew(self, label: str, sample: int) -> bool:
        return self._heard_anew(label, sample, self._away_heard)

    def _min_score(self, trig: Trigger) -> float:
        if trig.min_score is not None:
            return trig.min_score
        return self._rules.sounds.threshold(trig.sound or "")

    def _samples(self, seconds: float) -> int:
        return round(seconds * self._sr)

    def _action(self, appliance: str, command: Command, sample: int, reason: str) -> Action:
        topic, payload = self._rules.appliances[appliance].message(command)
        return Action(
            appliance=appliance,
            command=command,
            topic=topic,
            payload=payload,
            sample=sample,
            reason=reason,
        )
