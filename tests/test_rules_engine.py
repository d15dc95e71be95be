"""RuleEngine: claps, sounds, cooldowns in samples, time windows, AWAY mode, reload."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path

from claudio_daemon.events import (
    Action,
    Alert,
    ClapPattern,
    LevelReading,
    ModeChange,
    SoundEvent,
)
from claudio_daemon.rules.engine import RuleEngine
from claudio_daemon.rules.loader import load_rules, parse_rules
from claudio_daemon.rules.schema import RulesFile

SR = 22050
ROOT = Path(__file__).resolve().parents[1]

RULES = """\
appliances:
  lamp: {preset: tasmota, topic: lamp}
  tv: {preset: zigbee2mqtt, topic: living_room_tv}
triggers:
  - claps: 2
    actions: [{lamp: toggle}]
    cooldown_s: 1
  - claps: 3
    actions: [{tv: toggle}]
    cooldown_s: 1
  - sound: glass_breaking
    min_score: 0.6
    actions: [{lamp: "on"}]
    cooldown_s: 10
  - sound: dog
    actions: [{tv: "off"}]
    cooldown_s: 0
sounds:
  thresholds: {dog: 0.8}
away:
  armed: false
  arm_delay_s: 2
  cooldown_s: 5
  margin_db: 20
  min_score: 0.5
  actions: [lamp, tv]
"""


def rules_from(text: str = RULES, **away: object) -> RulesFile:
    text = textwrap.dedent(text)
    if away:
        text += "".join(f"  {k}: {v}\n" for k, v in away.items())
    return parse_rules(text, "test.yaml")


def claps(n: int, sample: int, level_db: float = -20.0) -> ClapPattern:
    return ClapPattern(
        count=n,
        clap_samples=tuple(sample - i for i in range(n)),
        decided_sample=sample,
        level_db=level_db,
    )


def sound(label: str, score: float, sample: int) -> SoundEvent:
    return SoundEvent(label=label, score=score, level_db=-25.0, sample=sample)


def fixed_clock(hour: int, minute: int = 0):
    return lambda: datetime(2024, 5, 1, hour, minute)


def summary(events) -> list[tuple]:
    out = []
    for e in events:
        if isinstance(e, Action):
            out.append(("action", e.appliance, e.command, e.topic, e.payload, e.reason))
        elif isinstance(e, Alert):
            out.append(("alert", e.label, e.score, e.level_db))
        else:
            out.append((type(e).__name__,))
    return out


# --------------------------------------------------------------------------- claps & sounds


def test_two_claps_toggle_lamp_three_toggle_tv():
    engine = RuleEngine(rules_from(), SR)
    assert engine.handle(claps(2, 10_000)) == [
        Action(
            appliance="lamp",
            command="toggle",
            topic="cmnd/lamp/POWER",
            payload="TOGGLE",
            sample=10_000,
            reason="claps:2",
        )
    ]
    assert summary(engine.handle(claps(3, 20_000))) == [
        (
            "action",
            "tv",
            "toggle",
            "zigbee2mqtt/living_room_tv/set",
            '{"state": "TOGGLE"}',
            "claps:3",
        )
    ]
    assert engine.handle(claps(4, 30_000)) == []
    assert engine.handle(claps(1, 40_000)) == []


def test_repository_example_file_drives_the_engine():
    engine = RuleEngine(load_rules(ROOT / "rules.yaml"), SR)
    assert summary(engine.handle(claps(2, 1))) == [
        ("action", "lamp", "toggle", "cmnd/lamp/POWER", "TOGGLE", "claps:2")
    ]
    assert summary(engine.handle(claps(3, 2))) == [
        (
            "action",
            "tv",
            "toggle",
            "zigbee2mqtt/living_room_tv/set",
            '{"state": "TOGGLE"}',
            "claps:3",
        )
    ]
    assert engine.away is False
    # The glass rule is an example with enabled: false.
    assert engine.handle(sound("glass_breaking", 0.99, 3)) == []


def test_cooldown_counted_in_samples():
    engine = RuleEngine(rules_from(), SR)
    assert len(engine.handle(claps(2, 100_000))) == 1
    assert engine.handle(claps(2, 100_000 + SR - 1)) == []
    # Another rule is not affected by the lamp rule's cooldown.
    assert len(engine.handle(claps(3, 100_000 + 10))) == 1
    assert len(engine.handle(claps(2, 100_000 + SR))) == 1
    # The cooldown runs from the last firing, not the last attempt.
    assert engine.handle(claps(2, 100_000 + SR + SR // 2)) == []
    assert len(engine.handle(claps(2, 100_000 + 2 * SR))) == 1


def test_cooldown_scales_with_sample_rate():
    engine = RuleEngine(rules_from(), 16_000)
    assert len(engine.handle(claps(2, 0))) == 1
    assert engine.handle(claps(2, 15_999)) == []
    assert len(engine.handle(claps(2, 16_000))) == 1


def test_sound_rules_use_min_score_or_label_threshold():
    engine = RuleEngine(rules_from(), SR)
    assert engine.handle(sound("glass_breaking", 0.59, 0)) == []
    assert summary(engine.handle(sound("glass_breaking", 0.6, 1))) == [
        ("action", "lamp", "on", "cmnd/lamp/POWER", "ON", "sound:glass_breaking")
    ]
    # dog has no min_score: sounds.thresholds.dog (0.8) applies, not the default 0.5.
    assert engine.handle(sound("dog", 0.7, 2)) == []
    assert summary(engine.handle(sound("dog", 0.85, 3))) == [
        ("action", "tv", "off", "zigbee2mqtt/living_room_tv/set", '{"state": "OFF"}', "sound:dog")
    ]
    assert engine.handle(sound("rain", 0.99, 4)) == []
    # Non-rule events produce nothing.
    assert engine.handle(ModeChange(away=True, source="x", sample=5)) == []


def test_a_sound_that_goes_on_fires_a_rule_once_even_without_cooldown():
    # The pipeline hands the engine every classification above the lowest threshold, held
    # back from publishing or not (sounds.hold_s 2 s). The dog rule (cooldown_s: 0) fires
    # on the first window that reaches its 0.8, not on every window while the dog barks.
    engine = RuleEngine(rules_from(), SR)
    hop = SR // 2
    scores = [0.7, 0.9, 0.85, 0.95, 0.9]  # the first one is below the rule's threshold
    fired = [len(engine.handle(sound("dog", s, i * hop))) for i, s in enumerate(scores)]
    assert fired == [0, 1, 0, 0, 0]
    # 0.7 windows are not the rule's sound: 2 s of them and the next bark is new.
    for i in range(5, 9):
        assert engine.handle(sound("dog", 0.7, i * hop)) == []
    assert len(engine.handle(sound("dog", 0.9, 9 * hop))) == 1
    # A held window still counts as the sound going on; the glass rule (0.6) keeps its own.
    assert engine.handle(sound("dog", 0.9, 9 * hop + 2 * SR - 1)) == []
    assert len(engine.handle(sound("glass_breaking", 0.6, 9 * hop + 2 * SR - 1))) == 1


TIMED = """\
appliances:
  lamp: {preset: tasmota, topic: lamp}
  night: {preset: shelly, topic: nightlight}
triggers:
  - claps: 2
    when: ["07:00-22:00"]
    actions: [lamp]
    cooldown_s: 0
  - claps: 2
    when: ["22:00-07:00"]
    actions: [{night: "on"}]
    cooldown_s: 0
"""


def test_time_windows_with_fixed_clock_across_midnight():
    rules = rules_from(TIMED)
    for (hour, minute), expected in [
        ((12, 0), "lamp"),
        ((7, 0), "lamp"),
        ((21, 59), "lamp"),
        ((22, 0), "night"),
        ((23, 30), "night"),
        ((0, 0), "night"),
        ((3, 0), "night"),
        ((6, 59), "night"),
    ]:
        engine = RuleEngine(rules, SR, clock=fixed_clock(hour, minute))
        fired = engine.handle(claps(2, 1000))
        assert [a.appliance for a in fired] == [expected], (hour, minute)
    engine = RuleEngine(rules, SR, clock=fixed_clock(23))
    (action,) = engine.handle(claps(2, 5))
    assert (action.topic, action.payload) == ("shellies/nightlight/relay/0/command", "on")


def test_clock_follows_time_of_day():
    now = [datetime(2024, 5, 1, 21, 59)]
    engine = RuleEngine(rules_from(TIMED), SR, clock=lambda: now[0])
    assert [a.appliance for a in engine.handle(claps(2, 0))] == ["lamp"]
    now[0] = datetime(2024, 5, 1, 22, 1)
    assert [a.appliance for a in engine.handle(claps(2, 10))] == ["night"]


# --------------------------------------------------------------------------- AWAY


def level(db: float, sample: int, floor: float = -60.0) -> LevelReading:
    return LevelReading(level_db=db, noise_floor_db=floor, sample=sample)


def test_disarmed_gives_no_alerts():
    engine = RuleEngine(rules_from(), SR)
    assert engine.away is False
    assert engine.handle(level(-10.0, 10 * SR)) == []
    assert engine.handle(sound("rain", 0.99, 10 * SR)) == []


def test_armed_alerts_after_arm_delay_and_switches_on():
    engine = RuleEngine(rules_from(), SR)
    assert engine.set_away(True, "mqtt", SR) == [ModeChange(away=True, source="mqtt", sample=SR)]
    assert engine.away is True
    # arm_delay_s: 2 -> nothing until sample SR + 2*SR
    assert engine.handle(level(-10.0, 3 * SR - 1)) == []
    assert not engine.away_active(3 * SR - 1) and engine.away_active(3 * SR)
    out = engine.handle(level(-10.0, 3 * SR))
    assert summary(out) == [
        ("alert", None, None, -10.0),
        ("action", "lamp", "on", "cmnd/lamp/POWER", "ON", "away"),
        ("action", "tv", "on", "zigbee2mqtt/living_room_tv/set", '{"state": "ON"}', "away"),
    ]
    assert all(e.sample == 3 * SR for e in out)


def test_away_level_is_relative_to_noise_floor():
    engine = RuleEngine(rules_from(RULES.replace("armed: false", "armed: true")), SR)
    t = 10 * SR
    assert engine.handle(level(-41.0, t, floor=-60.0)) == []  # 19 dB above floor
    assert len(engine.handle(level(-40.0, t, floor=-60.0))) == 3  # 20 dB above floor


def test_away_absolute_level_and_level_alerts_off():
    text = RULES.replace("armed: false", "armed: true").replace(
        "margin_db: 20", "min_level_db: -30"
    )
    engine = RuleEngine(rules_from(text), SR)
    assert engine.handle(level(-31.0, 10 * SR, floor=-90.0)) == []
    assert len(engine.handle(level(-30.0, 10 * SR, floor=-90.0))) == 3
    text = RULES.replace("armed: false", "armed: true").replace("margin_db: 20", "margin_db: null")
    engine = RuleEngine(rules_from(text), SR)
    assert engine.handle(level(0.0, 10 * SR)) == []
    assert summary(engine.handle(sound("rain", 0.9, 10 * SR)))[0] == ("alert", "rain", 0.9, -25.0)


def test_away_cooldown_and_disarm():
    engine = RuleEngine(rules_from(RULES.replace("armed: false", "armed: true")), SR)
    t = 10 * SR
    assert len(engine.handle(sound("rain", 0.9, t))) == 3
    assert engine.handle(sound("siren", 0.9, t + 5 * SR - 1)) == []  # cooldown_s: 5
    assert len(engine.handle(sound("rain", 0.9, t + 5 * SR))) == 3
    # A sound that goes on (heard again within sounds.hold_s) is the same sound: no new
    # alert however short the cooldown.
    assert engine.handle(sound("rain", 0.9, t + 11 * SR)) != []
    for k in range(1, 20):
        assert engine.handle(sound("rain", 0.9, t + 11 * SR + k * SR)) == []
    assert engine.set_away(False, "cli", t + 6 * SR) == [
        ModeChange(away=False, source="cli", sample=t + 6 * SR)
    ]
    assert engine.handle(level(0.0, t + 20 * SR)) == []
    # Re-arming restarts the arm delay and forgets the old cooldown.
    engine.set_away(True, "cli", t + 30 * SR)
    assert engine.handle(level(0.0, t + 31 * SR)) == []
    assert len(engine.handle(level(0.0, t + 32 * SR))) == 3


def test_arming_twice_does_not_restart_delay():
    engine = RuleEngine(rules_from(), SR)
    engine.set_away(True, "mqtt", 0)
    assert engine.set_away(True, "mqtt", SR) == [ModeChange(away=True, source="mqtt", sample=SR)]
    assert engine.away_active(2 * SR)


def test_away_any_sound_vs_chosen_labels():
    any_engine = RuleEngine(rules_from(RULES.replace("armed: false", "armed: true")), SR)
    t = 10 * SR
    assert summary(any_engine.handle(sound("rain", 0.5, t)))[0] == ("alert", "rain", 0.5, -25.0)
    assert any_engine.handle(sound("dog", 0.4, t + 100 * SR)) == []  # below away.min_score

    chosen = RULES.replace("armed: false", "armed: true") + "  sounds: [dog, clapping]\n"
    engine = RuleEngine(rules_from(chosen), SR)
    assert engine.handle(sound("rain", 0.99, t)) == []
    out = engine.handle(sound("dog", 0.6, t))  # 0.6 < dog rule's 0.8: alert only
    assert summary(out)[0] == ("alert", "dog", 0.6, -25.0) and len(out) == 3
    # A clap pattern counts as the label "clapping"; rule actions come before AWAY's ON.
    out = engine.handle(claps(2, t + 10 * SR, level_db=-18.0))
    assert summary(out) == [
        ("action", "lamp", "toggle", "cmnd/lamp/POWER", "TOGGLE", "claps:2"),
        ("alert", "clapping", None, -18.0),
        ("action", "lamp", "on", "cmnd/lamp/POWER", "ON", "away"),
        ("action", "tv", "on", "zigbee2mqtt/living_room_tv/set", '{"state": "ON"}', "away"),
    ]


def test_away_without_alert_event_still_switches():
    text = RULES.replace("armed: false", "armed: true") + "  alert: false\n"
    engine = RuleEngine(rules_from(text), SR)
    assert [type(e) for e in engine.handle(level(0.0, 10 * SR))] == [Action, Action]


def test_claps_outside_chosen_away_labels_do_not_alert():
    text = RULES.replace("armed: false", "armed: true") + "  sounds: [dog]\n"
    engine = RuleEngine(rules_from(text), SR)
    assert summary(engine.handle(claps(3, 10 * SR)))[0][-1] == "claps:3"
    assert len(engine.handle(claps(3, 20 * SR))) == 1


# --------------------------------------------------------------------------- reload


def test_replace_rules_keeps_away_state_and_unchanged_cooldowns():
    engine = RuleEngine(rules_from(), SR)
    engine.set_away(True, "mqtt", 9 * SR)  # still within the 2 s arm delay below
    assert len(engine.handle(claps(2, 10 * SR))) == 1
    assert len(engine.handle(claps(3, 10 * SR))) == 1
    # New file: the 2-clap rule is unchanged (moved), the 3-clap rule has a new cooldown,
    # and the file says armed: false, which a reload must not apply.
    new_text = RULES.replace("    cooldown_s: 1\n  - sound", "    cooldown_s: 0.5\n  - sound")
    new_text = new_text.replace("triggers:\n", "triggers:\n  - {sound: rain, actions: [lamp]}\n")
    engine.replace_rules(rules_from(new_text))
    assert engine.away is True
    assert not engine.away_active(11 * SR - 1) and engine.away_active(11 * SR)  # arm time kept
    assert engine.handle(claps(2, 10 * SR + 100)) == []  # cooldown kept
    assert len(engine.handle(claps(3, 10 * SR + 100))) == 1  # changed rule: fresh clock
    assert engine.rules.triggers[0].sound == "rain"


def test_replace_rules_uses_new_appliances():
    engine = RuleEngine(rules_from(), SR)
    engine.replace_rules(rules_from(RULES.replace("topic: lamp}", "topic: desk}")))
    (action,) = engine.handle(claps(2, 0))
    assert action.topic == "cmnd/desk/POWER"
