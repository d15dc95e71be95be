"""Groups accepted claps into patterns ("two claps", "three claps") and rejects applause.

Rules, all in samples so a replay gives the same answer as a live run:

* Claps of one pattern are about equally loud. A transient more than `level_range_db`
  quieter than the loudest clap of the current group (or of the applause being ignored)
  is background (crickets, a ticking clock, typing) and is ignored; one that much louder
  than everything in the group wipes the group (or the applause state) and starts anew.
  Without this, a steady stream of quiet clap-like ticks would look like applause and
  mute real claps.
* A clap closer than `min_gap_s` to the previous one is an echo or a flam: ignored.
* A gap longer than `max_gap_s`, or `end_silence_s` without a clap, ends the group; the
  finished group becomes a `ClapPattern` with its count.
* More claps in one group than the largest count any rule uses (`max_count`) is
  applause or rhythmic clapping, never a command: the group is dropped and every clap is
  ignored until `applause_quiet_s` has passed without one. Softer claps count towards
  that too: a transient that passed the busy-background gate but is up to
  `applause_companion_db` below the level range is not part of the pattern, yet it is
  clapping. Real applause mixes loud and soft claps, and without this its loudest four,
  with the soft ones between them ignored, looked like a sparse four-clap command.
* A group that starts within `max_gap_s` of the last clap of a pattern just emitted is a
  continuation of that clapping, not a new command: it is treated as applause too.
* Claps of one pattern lie within `level_range_db` of each other: a group that grows
  louder clap by clap beyond that (steps coming closer, a dog working itself up) is not a
  command and is ignored like applause.
* A command stands alone: a transient of any shape (`note_transient`) within
  `isolation_s` before the first clap or after the last, or between two of its claps
  without being one of them, at most `isolation_db` quieter than the loudest clap, means
  the claps are the clean-looking part of a longer sound (a step between two heel
  strikes, a laugh, the edge of applause, a scuff between steps); the group is dropped.
  Between the claps, the transients a clap-by-clap rule cannot see matter most: one
  ignored as an echo (`min_gap_s`) or one too dull to be a clap, yet as loud as the claps.

Deciding at the largest count versus applause: a group that reaches `max_count` can only
grow into applause, so waiting the full end silence is pointless, but deciding at the very
clap would fire on the first claps of every applause. The grouper therefore waits a short
guard derived from the group's own rhythm: `max_count_guard_factor` times its longest gap
(at least `max_count_guard_min_s`, at most `end_silence_s`). People who clap a command
stop; applause keeps the rhythm, so its next clap falls inside the guard and turns the
group into applause. With gaps of 0.2-0.7 s this decides 0.7-0.9 s after the last clap
instead of always `end_silence_s`; the floor of 0.7 s is for applause and steps, whose
rhythm is uneven (after gaps of 0.14 and 0.2 s the next clap may come 0.27 s later, after
steps 0.37 and 0.28 s apart the next 0.62 s later).
"""

from __future__ import annotations

import logging
from collections import deque

from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.events import Clap, ClapPattern

log = logging.getLogger(__name__)


class PatternGrouper:
    """Feed claps in time order with `push_clap`; call `advance` as time passes."""

    def __init__(self, settings: ClapSettings, sample_rate: int, max_count: int) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self._min_gap = int(round(settings.min_gap_s * sample_rate))
        self._max_gap = int(round(settings.max_gap_s * sample_rate))
        self._end_silence = int(round(settings.end_silence_s * sample_rate))
        self._quiet = int(round(settings.applause_quiet_s * sample_rate))
        self._isolation = int(round(settings.isolation_s * sample_rate))
        self.set_max_count(max_count)
        self.reset()

    def reset(self) -> None:
        self._group: list[Clap] = []
        #: Soft claps heard since the group started (see `applause_companion_db`).
        self._companions = 0
        self._applause_last: int | None = None
        self._applause_level = -200.0
        self._emitted_last: int | None = None
        self._emitted_level = -200.0
        #: (last clap, loudest level) of the last pattern decided, kept applause_quiet_s.
        self._previous: tuple[int, float] | None = None
        #: Every transient (onset sample, level) recent enough to neighbour a group.
        self._transients: deque[tuple[int, float]] = deque()

    def after_hole(self, sample: int) -> None:
        """Audio before `sample` was lost. A clap within `max_gap_s` after it may be the
        last of a pattern whose first claps fell into the hole (two heard of a lost three
        would make another command), so it is taken like clapping that went on: ignored,
        with whatever follows it, until a gap shows the clapping over."""
        self._group = []
        self._emitted_last = int(sample)
        self._emitted_level = -200.0

    def set_max_count(self, n: int) -> None:
        """The largest clap count any rule uses (the rules may change at run time)."""
        if n < 1:
            raise ValueError(f"max_count must be at least 1, got {n}")
        self.max_count = int(n)
        # Long enough to reach back from a decision (up to the longer of the end silence and
        # the isolation window after the last clap) to the isolation window before the first.
        self._horizon = (
            self._isolation
            + (self.max_count + 1) * self._max_gap
            + max(self._end_silence, self._isolation)
        )

    @property
    def in_applause(self) -> bool:
        return self._applause_last is not None

    @property
    def pending(self) -> tuple[Clap, ...]:
        return tuple(self._group)

    @property
    def clapping_may_go_on(self) -> bool:
        """Claps are being grouped, applause is under way, or a clap may still follow a
        pattern just decided or a hole: a grouper that starts now must not count what
        comes next as a pattern of its own."""
        return (
            bool(self._group) or self._applause_last is not None or self._emitted_last is not None
        )

    def deadline(self) -> int | None:
        """Sample at which the pending group will be decided if no clap arrives."""
        if not self._group:
            return None
        last = self._group[-1].sample
        wait = self._guard() if len(self._group) >= self.max_count else self._end_silence
        # The isolation window after the last clap must have been heard.
        return last + max(wait, self._isolation)

    def _guard(self) -> int:
        s = self.settings
        samples = [c.sample for c in self._group]
        gaps = [b - a for a, b in zip(samples[:-1], samples[1:], strict=True)]
        if not gaps:
            return self._end_silence
        guard = s.max_count_guard_factor * max(gaps)
        guard = max(guard, s.max_count_guard_min_s * self.sample_rate)
        return int(min(guard, self._end_silence))

    def _start_applause(self, clap: Clap, level: float) -> None:
        self._group = []
        self._applause_last = clap.sample
        self._applause_level = max(level, clap.level_db)

    def note_transient(self, sample: int, level_db: float) -> None:
        """Every onset the detector measured, clap-shaped or not, in time order and before
        it is pushed as a clap (the isolation test needs the neighbours of a group)."""
        self._transients.append((int(sample), float(level_db)))
        while self._transients and self._transients[0][0] < sample - self._horizon:
            self._transients.popleft()

    def _crowded(self, group: list[Clap]) -> str | None:
        """Where a transient lies that shows the group is part of a longer sound ("0.12 s
        after them, only 1.4 dB softer"), or None when the group stands alone."""
        if self._isolation <= 0:
            return None
        own = {c.sample for c in group}
        loud = max(c.level_db for c in group)
        first, last = group[0].sample, group[-1].sample
        for t, level in self._transients:
            if t in own or level < loud - self.settings.isolation_db:
                continue
            if first - self._isolation <= t < first:
                where = f"{(first - t) / self.sample_rate:.2f} s before them"
            elif first < t < last:
                where = f"between them ({(t - first) / self.sample_rate:.2f} s after the first)"
            elif last < t < last + self._isolation:
                # Open at the far end: the decision may come at last + isolation exactly
                # (`deadline`), before an onset at that very sample has been measured.
                where = f"{(t - last) / self.sample_rate:.2f} s after them"
            else:
                continue
            return f"{where}, only {loud - level:.1f} dB softer"
        return None

    def push_clap(self, clap: Clap) -> list[ClapPattern]:
        # What was decided before this clap: a group whose deadline is this very sample
        # (a gap of exactly max_gap, which is also the end silence) still takes it.
        out = self.advance(clap.sample - 1)
        span = self.settings.level_range_db
        if self._applause_last is not None:
            if clap.level_db < self._applause_level - span:
                return out  # background tick during applause
            if clap.level_db <= self._applause_level + span:
                self._applause_last = clap.sample
                self._applause_level = max(self._applause_level, clap.level_db)
                return out
            self._applause_last = None  # far louder than the "applause": a real clap
        if not self._group:
            self._companions = 0
            if (
                self._emitted_last is not None
                and clap.sample - self._emitted_last <= self._max_gap
                and clap.level_db >= self._emitted_level - span
            ):
                self._start_applause(clap, self._emitted_level)  # clapping went on
                return out
            self._group = [clap]
            return out
        loudest = max(c.level_db for c in self._group)
        if clap.level_db < loudest - span:
            if clap.level_db >= loudest - span - self.settings.applause_companion_db:
                self._companions += 1
                if len(self._group) + self._companions > self.max_count:
                    self._start_applause(clap, loudest)
            return out
        if clap.level_db > loudest + span:
            self._group = [clap]  # what we were collecting was background
            self._companions = 0
            return out
        gap = clap.sample - self._group[-1].sample
        if gap < self._min_gap:
            return out
        if gap > self._max_gap:
            out.extend(self._finish(clap.sample))
            self._group = [clap]
            self._companions = 0
            return out
        if clap.level_db - min(c.level_db for c in self._group) > span:
            # Louder step by step (within the range of the loudest so far, yet beyond it
            # from the first): steps coming closer or a dog working itself up, not a
            # command. Ignore the run like applause; a much louder clap still breaks out.
            self._start_applause(clap, clap.level_db)
            return out
        self._group.append(clap)
        if len(self._group) > self.max_count:
            # Said, since someone clapping four times for a rule they meant to write
            # would otherwise hear nothing and see nothing.
            log.info(
                "%d claps in a row, more than any rule's %d: taken for applause, not a command",
                len(self._group),
                self.max_count,
            )
            self._start_applause(clap, loudest)
        return out

    def push_doubtful(self, clap: Clap) -> list[ClapPattern]:
        """A clap-shaped transient that a gate refused (e.g. a busy background).

        It cannot start a pattern, but if it is as loud as the claps being grouped (within
        the level range) it is more of the same clapping and counts, so a run of alike
        claps still turns into applause instead of leaving a short pattern behind. (Half
        the range let the softer claps of real applause slip out, and its loudest four
        became a command.)
        """
        span = self.settings.level_range_db
        if self._group and clap.level_db >= max(c.level_db for c in self._group) - span:
            return self.push_clap(clap)
        if self._applause_last is not None and clap.level_db >= self._applause_level - span:
            return self.push_clap(clap)
        return self.advance(clap.sample)

    def advance(self, now_sample: int) -> list[ClapPattern]:
        """Decide what `now_sample` (all claps before it have been pushed) settles."""
        if self._applause_last is not None and now_sample - self._applause_last >= self._quiet:
            self._applause_last = None
        if self._emitted_last is not None and now_sample - self._emitted_last > self._max_gap:
            self._emitted_last = None
        deadline = self.deadline()
        if deadline is not None and now_sample >= deadline:
            return self._finish(now_sample)
        return []

    def _finish(self, now_sample: int) -> list[ClapPattern]:
        group, self._group = self._group, []
        if not group or len(group) > self.max_count:
            return []
        crowded = self._crowded(group)
        if crowded is not None:
            log.info("%d claps dropped: another sound %s", len(group), crowded)
            return []
        loud = max(c.level_db for c in group)
        if len(group) == 1 and self._previous is not None:
            at, level = self._previous
            after_s = (group[0].sample - at) / self.sample_rate
            if (
                after_s <= self.settings.applause_quiet_s
                and loud < level - self.settings.level_range_db
            ):
                # A lone transient well below the claps that just made a pattern: the room
                # (a clock's next tick, a dish), not a command of its own.
                log.info(
                    "1 clap dropped: %.1f dB below the pattern %.2f s before it",
                    level - loud,
                    after_s,
                )
                return []
        self._emitted_last = group[-1].sample
        self._emitted_level = loud
        self._previous = (group[-1].sample, loud)
        return [
            ClapPattern(
                count=len(group),
                clap_samples=tuple(c.sample for c in group),
                decided_sample=int(now_sample),
                level_db=float(sum(c.level_db for c in group) / len(group)),
            )
        ]
