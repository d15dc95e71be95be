"""PatternGrouper on synthetic Clap events: gaps, end silence, max-count guard, applause."""

from __future__ import annotations

import pytest

from claudio_daemon.detect.patterns import PatternGrouper
from claudio_daemon.detect.settings import ClapSettings
from claudio_daemon.events import Clap

SR = 22050


def run(times_s, max_count=3, until_s=None, levels=None, **kw):
    g = PatternGrouper(ClapSettings(**kw), SR, max_count)
    out = []
    for i, t in enumerate(times_s):
        level = -20.0 if levels is None else levels[i]
        out += g.push_clap(Clap(sample=int(t * SR), level_db=level))
        out += g.advance(int(t * SR) + 1)
    end = (times_s[-1] if times_s else 0) + 5 if until_s is None else until_s
    for s in range(0, int(end * SR), 256):
        out += g.advance(s)
    return out, g


def test_two_claps_decided_after_end_silence() -> None:
    out, _ = run([1.0, 1.4])
    (p,) = out
    assert p.count == 2 and p.clap_samples == (SR, int(1.4 * SR))
    assert p.decided_sample - p.clap_samples[-1] == pytest.approx(0.9 * SR, abs=256)


def test_pending_pattern_waits_for_silence() -> None:
    g = PatternGrouper(ClapSettings(), SR, 3)
    assert g.push_clap(Clap(SR, -20.0)) == []
    assert g.advance(int(1.5 * SR)) == []  # 0.5 s: a second clap may still come
    assert g.deadline() == SR + int(0.9 * SR)
    assert [p.count for p in g.advance(g.deadline())] == [1]


def test_gap_too_long_splits_and_too_short_is_ignored() -> None:
    out, _ = run([1.0, 2.5, 2.9])  # 1.5 s > max gap
    assert [p.count for p in out] == [1, 2]
    out, _ = run([1.0, 1.05, 1.4])  # 50 ms: an echo
    assert [p.count for p in out] == [2]


def test_a_clap_exactly_max_gap_after_the_last_joins_it() -> None:
    """A gap of exactly max_gap_s (the end silence too, by default and after calibration)
    belongs to the pattern, but the group was decided first at that very sample: a
    one-clap pattern, and the second clap then taken for clapping that went on."""
    g = PatternGrouper(ClapSettings(), SR, 3)
    gap = int(round(ClapSettings().max_gap_s * SR))
    out = g.push_clap(Clap(SR, -20.0)) + g.push_clap(Clap(SR + gap, -20.0))
    out += g.advance(SR + gap + 3 * SR)
    assert [(p.count, p.clap_samples) for p in out] == [(2, (SR, SR + gap))]


def test_a_footsteps_heel_and_toe_are_one_sound_not_two_claps() -> None:
    # One step (ESC-50 fold 4, in four bench seeds' false triggers): heel, then toe 0.133 s
    # later, 3 dB softer. Claps that close are faster than anyone claps a command.
    out, _ = run([4.425, 4.558], levels=[-32.0, -34.9])
    assert [p.count for p in out] == [1]
    out, _ = run([1.0, 1.16, 1.5])  # claps 0.16 s apart still count
    assert [p.count for p in out] == [3]


def test_max_count_decides_after_short_guard() -> None:
    out, _ = run([1.0, 1.4, 1.6])
    (p,) = out
    wait = (p.decided_sample - p.clap_samples[-1]) / SR
    assert wait == pytest.approx(0.7, abs=0.02)  # the guard's floor, not the end silence
    out, _ = run([1.0, 1.6, 2.2])
    (p,) = out
    wait = (p.decided_sample - p.clap_samples[-1]) / SR
    assert wait == pytest.approx(0.78, abs=0.02)  # 1.3 x the 0.6 s gap


def test_clap_inside_guard_means_applause() -> None:
    out, g = run([1.0, 1.3, 1.6, 1.9, 2.2, 2.5], until_s=3.0)
    assert out == [] and g.in_applause
    out, g = run([1.0, 1.3, 1.6, 1.9, 2.2, 2.5])
    assert out == [] and not g.in_applause  # quiet again after applause_quiet_s


def test_more_claps_than_any_rule_is_said_once_in_the_log(caplog) -> None:  # noqa: ANN001
    # Four claps where the rules stop at three: no command, but not silently either.
    with caplog.at_level("INFO", logger="claudio_daemon.detect.patterns"):
        out, _ = run([1.0, 1.4, 1.8, 2.2, 2.6, 3.0], until_s=8.0)
    assert out == []
    said = [r.getMessage() for r in caplog.records]
    assert said == ["4 claps in a row, more than any rule's 3: taken for applause, not a command"]


def test_applause_suppresses_until_quiet_then_commands_work() -> None:
    applause = [1.0 + 0.25 * i for i in range(16)]  # 4 s of clapping
    out, _ = run(applause + [6.5, 6.9])
    assert [p.count for p in out] == [2]
    assert out[0].clap_samples[0] == int(6.5 * SR)


def test_clapping_on_right_after_a_pattern_is_not_a_new_command() -> None:
    # Three claps decided after the guard (0.7 s), then more claps in the same rhythm.
    out, _ = run([1.0, 1.2, 1.4, 2.15, 2.35, 2.55])
    assert [p.count for p in out] == [3]


def test_quick_claps_wait_the_guard_floor_so_uneven_applause_is_not_a_command() -> None:
    # Real applause: three quick claps, then the next one 0.27 s later (past 1.3 x 0.2 s).
    out, g = run([1.0, 1.16, 1.36, 1.63, 1.82, 1.98], until_s=2.5)
    assert out == [] and g.in_applause
    # The same three claps as a command are decided 0.7 s after the last, not later.
    (p,) = run([1.0, 1.16, 1.36])[0]
    assert p.count == 3
    assert (p.decided_sample - p.clap_samples[-1]) / SR == pytest.approx(0.7, abs=0.02)


def test_steps_that_slow_down_after_three_are_not_a_command() -> None:
    # Footsteps (bench seed 0, fold 4): three steps 0.37 and 0.28 s apart, the fourth
    # 0.62 s later, past 1.3 x the longest gap (0.48 s) but inside the guard's floor.
    steps = [4.856, 5.222, 5.499, 6.114, 7.459, 7.818]
    out, _ = run(steps, levels=[-28.0, -26.0, -27.7, -30.8, -23.7, -28.1])
    assert out == []


def test_larger_max_count_waits_full_silence_for_smaller_counts() -> None:
    out, _ = run([1.0, 1.3, 1.6], max_count=4)
    (p,) = out
    assert p.count == 3
    assert p.decided_sample - p.clap_samples[-1] >= int(0.9 * SR)
    out, _ = run([1.0, 1.3, 1.6, 1.9], max_count=4)
    assert [p.count for p in out] == [4]


def test_set_max_count_changes_the_limit() -> None:
    g = PatternGrouper(ClapSettings(), SR, 2)
    g.set_max_count(3)
    for t in (1.0, 1.3, 1.6):
        assert g.push_clap(Clap(int(t * SR), -20.0)) == []
    assert [p.count for p in g.advance(int(3 * SR))] == [3]
    with pytest.raises(ValueError):
        g.set_max_count(0)


def test_quiet_background_ticks_are_ignored_and_loud_claps_restart() -> None:
    # Ticks 20 dB below the claps neither count nor break the pattern.
    out, _ = run([1.0, 1.2, 1.4, 1.6], levels=[-20.0, -40.0, -20.0, -40.0])
    assert [p.count for p in out] == [2]
    # A run of quiet ticks is wiped by a clap far louder than them.
    ticks = [0.5 + 0.2 * i for i in range(6)]
    out, _ = run(ticks + [1.8, 2.1], levels=[-45.0] * 6 + [-20.0, -20.0])
    assert [p.count for p in out] == [2]


def test_a_tick_8_db_below_a_clap_is_not_part_of_its_pattern() -> None:
    # A slow clock ticking 8 dB below a single clap, 0.8 s after it (inside max_gap).
    out, _ = run([1.0, 1.8], levels=[-20.0, -28.0])
    assert [p.count for p in out] == [1]


def test_clap_well_above_tick_applause_starts_a_command() -> None:
    # A ticking clock mistaken for applause at start-up (no busy statistics yet) must not
    # swallow a clap 8 dB louder than the ticks.
    ticks = [0.4 * i for i in range(1, 10)]
    out, g = run(ticks + [4.0], levels=[-30.0] * 9 + [-22.0], max_count=3)
    assert [p.count for p in out] == [1]
    assert out[0].clap_samples == (int(4.0 * SR),)


def test_doubtful_claps_within_the_level_range_keep_applause_going() -> None:
    # Applause in a busy room: the busy gate refuses the softer claps, but those within the
    # level range of the loudest are still the same clapping, so no "command" of four.
    g = PatternGrouper(ClapSettings(), SR, max_count=4)
    out = []
    times = [1.0 + 0.33 * i for i in range(8)]
    levels = [-20.0, -21.0, -24.5, -20.5, -25.0, -21.5, -24.0, -24.5]
    for i, (t, level) in enumerate(zip(times, levels, strict=True)):
        clap = Clap(sample=int(t * SR), level_db=level)
        out += g.push_clap(clap) if i in (0, 1, 3, 5) else g.push_doubtful(clap)
    out += g.advance(int(8 * SR))
    assert out == [] and g.in_applause is False  # quiet again by 8 s
    # A refused tick far below the claps is not part of them.
    g = PatternGrouper(ClapSettings(), SR, max_count=4)
    out = g.push_clap(Clap(sample=SR, level_db=-20.0))
    out += g.push_doubtful(Clap(sample=int(1.4 * SR), level_db=-28.0))
    out += g.advance(int(4 * SR))
    assert [p.count for p in out] == [1]


def test_soft_claps_between_loud_ones_make_applause_not_a_command() -> None:
    # Real applause (ESC-50 fold 4): four loud claps with softer ones 7-8 dB below between
    # and after them. The soft ones are outside the level range, so without counting them
    # the loud four were decided as a sparse four-clap command.
    times = [3.19, 3.34, 3.57, 3.74, 3.93, 4.15, 4.30, 4.56, 4.96]
    levels = [-24.6, -20.6, -27.8, -19.3, -23.4, -26.5, -26.7, -20.7, -26.9]
    # (With the guard's floor at 0.4 s: the 0.7 s floor alone now also hears the next clap.)
    out, _ = run(times, max_count=4, levels=levels, max_count_guard_min_s=0.4)
    assert out == []
    out, _ = run(
        times, max_count=4, levels=levels, applause_companion_db=0.0, max_count_guard_min_s=0.4
    )
    assert [p.count for p in out] == [4]


def test_a_clock_ticking_10_db_below_a_command_does_not_make_it_applause() -> None:
    claps, ticks = [1.0, 1.3, 1.7, 2.3], [1.15, 1.5, 2.0, 2.6]
    times = sorted(claps + ticks)
    levels = [-20.0 if t in claps else -30.5 for t in times]
    out, _ = run(times, max_count=4, levels=levels)
    assert [p.count for p in out] == [4]


def test_claps_growing_louder_beyond_the_level_range_are_not_a_command() -> None:
    # Steps coming closer: each within 6 dB of the loudest so far, 8 dB from first to last.
    out, g = run([1.0, 1.5, 2.0], levels=[-28.0, -24.5, -20.0], until_s=2.5)
    assert out == [] and g.in_applause
    # Within the range from first to last it is a command.
    out, _ = run([1.0, 1.5, 2.0], levels=[-25.0, -22.0, -20.0])
    assert [p.count for p in out] == [3]
    # A clap far louder than the ignored run still starts a command.
    out, _ = run([1.0, 1.5, 2.0, 2.6, 3.0], levels=[-38.0, -34.5, -30.0, -20.0, -20.0])
    assert [p.count for p in out] == [2]


def test_isolation_waits_for_its_window_and_checks_both_sides() -> None:
    quick = {"isolation_s": 0.5, "max_count_guard_min_s": 0.0}
    g = PatternGrouper(ClapSettings(**quick), SR, 2)
    for t in (1.0, 1.2):
        g.note_transient(int(t * SR), -20.0)
        g.push_clap(Clap(int(t * SR), -20.0))
    # The max-count guard alone would decide 0.26 s after the last clap.
    assert g.deadline() == int(1.2 * SR) + int(0.5 * SR)
    g.note_transient(int(1.6 * SR), -22.0)  # 0.4 s after, 2 dB softer
    assert g.advance(int(1.8 * SR)) == []
    g = PatternGrouper(ClapSettings(**quick), SR, 2)
    g.note_transient(int(0.6 * SR), -24.0)  # before the first clap but 4 dB softer
    for t in (1.0, 1.2):
        g.note_transient(int(t * SR), -20.0)
        g.push_clap(Clap(int(t * SR), -20.0))
    assert [p.count for p in g.advance(int(1.8 * SR))] == [2]


def test_a_sound_at_the_very_end_of_the_isolation_window_counts_the_same_either_way() -> None:
    """With the isolation window as long as the end silence, the decision falls on
    last + isolation_s exactly. An onset at that sample spoilt the command when it was
    measured before the decision and not when the decision came first: the frame grid
    decided. The window is open at that end, so neither order counts it."""
    settings = ClapSettings(isolation_s=0.5, end_silence_s=0.5)
    last = int(1.2 * SR)
    edge = last + int(round(0.5 * SR))

    def grouper() -> PatternGrouper:
        g = PatternGrouper(settings, SR, 3)
        for t in (int(1.0 * SR), last):
            g.note_transient(t, -20.0)
            g.push_clap(Clap(t, -20.0))
        assert g.deadline() == edge
        return g

    measured_first = grouper()
    measured_first.note_transient(edge, -20.0)
    decided_first = grouper()
    out = decided_first.advance(edge)
    decided_first.note_transient(edge, -20.0)
    assert [p.count for p in measured_first.advance(edge)] == [p.count for p in out] == [2]
    # One sample inside the window it spoils the command, as before.
    g = grouper()
    g.note_transient(edge - 1, -20.0)
    assert g.advance(edge) == []


def test_a_sound_between_the_claps_as_loud_as_them_spoils_the_command(caplog) -> None:
    # Footsteps (ESC-50 fold 4): heel strikes at 3.0, 3.54 and 3.83 s passed as three
    # claps; a scuff 83 ms after the second, as loud, was ignored as an echo by min_gap.
    def grouper_with(between: tuple[float, float] | None) -> list[int]:
        g = PatternGrouper(ClapSettings(), SR, 3)
        events = [(3.0, -27.3, True), (3.54, -28.0, True), (3.83, -30.8, True)]
        if between is not None:
            events.append((between[0], between[1], False))
        for t, level, clap in sorted(events):
            g.note_transient(int(t * SR), level)
            if clap:
                g.push_clap(Clap(int(t * SR), level))
        return [p.count for p in g.advance(int(6.0 * SR))]

    with caplog.at_level("INFO", logger="claudio_daemon.detect.patterns"):
        assert grouper_with((3.623, -28.2)) == []
    assert "3 claps dropped: another sound between them (0.62 s after the first)" in caplog.text
    # Clearly softer (a clock tick 4 dB below the loudest clap) it is background.
    assert grouper_with((3.623, -31.3)) == [3]
    assert grouper_with(None) == [3]
    # isolation_s 0 turns the whole test off.
    g = PatternGrouper(ClapSettings(isolation_s=0.0), SR, 2)
    for t, level in ((1.0, -20.0), (1.2, -20.0), (1.5, -20.0)):
        g.note_transient(int(t * SR), level)
        if t != 1.2:
            g.push_clap(Clap(int(t * SR), level))
    assert [p.count for p in g.advance(int(3.0 * SR))] == [2]


def test_a_lone_tick_well_below_the_pattern_just_before_is_no_single_clap(caplog) -> None:  # noqa: ANN001
    # Three claps, then a clock's next tick 10 dB softer 0.95 s after the last: in the clap
    # benchmark's ESC-50 clock scenes at 10 dB it became a one-clap command of its own.
    caplog.set_level("INFO", logger="claudio_daemon.detect.patterns")
    out, _ = run([1.0, 1.3, 1.7, 2.65], levels=[-20.0, -20.0, -20.0, -30.0], max_count=4)
    assert [p.count for p in out] == [3]
    assert "1 clap dropped: 10.0 dB below the pattern 0.95 s before it" in caplog.text
    # Nearly as loud as the claps, it is a clap of its own; so is a soft one heard later
    # than applause_quiet_s.
    out, _ = run([1.0, 1.3, 1.7, 2.65], levels=[-20.0, -20.0, -20.0, -24.0], max_count=4)
    assert [p.count for p in out] == [3, 1]
    out, _ = run([1.0, 1.3, 1.7, 3.3], levels=[-20.0, -20.0, -20.0, -30.0], max_count=4)
    assert [p.count for p in out] == [3, 1]
