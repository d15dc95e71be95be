"""The clap benchmark and its amplitude-threshold baseline (a small, fast run on real clips)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.baseline import ThresholdClapCounter, threshold_from_claps
from bench.claps import main, score_scene, summarise
from bench.scenes import Scene
from claudio_daemon.events import ClapPattern

SR = 22050


def bursts(onsets_s: list[float], seconds: float, level: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = 0.01 * rng.standard_normal(int(seconds * SR))
    n = int(0.05 * SR)
    env = np.exp(-np.arange(n) / (0.01 * SR))
    for t in onsets_s:
        i = int(t * SR)
        x[i : i + n] += level * env * rng.standard_normal(n)
    return x.astype(np.float32)


def feed(counter: ThresholdClapCounter, x: np.ndarray, sizes) -> list[ClapPattern]:
    out, i = [], 0
    for n in sizes:
        out += counter.push(x[i : i + n])
        i += n
        if i >= x.size:
            break
    return out


def test_baseline_counts_claps_above_its_threshold() -> None:
    x = bursts([1.0, 1.4, 1.8, 4.0, 4.3], 6.0)
    out = ThresholdClapCounter(0.3, SR).push(x)
    assert [p.count for p in out] == [3, 2]
    assert abs(out[0].clap_samples[0] - SR) < 300
    # Decided once `end_silence_s` passed without a clap.
    assert out[0].decided_sample - out[0].clap_samples[-1] == pytest.approx(0.9 * SR, abs=256)
    # Quieter than the threshold: nothing; the debounce swallows a clap's own ring.
    assert ThresholdClapCounter(0.3, SR).push(bursts([1.0, 1.4], 3.0, level=0.04)) == []
    assert [p.count for p in ThresholdClapCounter(0.3, SR).push(bursts([1.0, 1.1], 3.0))] == [1]


def test_baseline_is_chunk_size_independent() -> None:
    x = bursts([0.5, 0.9, 2.5, 2.8, 3.1], 5.0)
    ref = ThresholdClapCounter(0.3, SR).push(x)
    rng = np.random.default_rng(2)
    for sizes in ([64] * 10000, [1000] * 100, rng.integers(1, 3000, size=1000).tolist()):
        assert feed(ThresholdClapCounter(0.3, SR), x, sizes) == ref


def test_threshold_from_claps_is_below_the_median_clap() -> None:
    claps = [np.array([0.0, 0.5, -0.2]), np.array([0.1, -1.0])]
    assert threshold_from_claps(claps, [1.0, 0.5]) == pytest.approx(0.5 * 10 ** (-6 / 20))


def test_scoring_exact_wrong_and_false_triggers() -> None:
    clap = Scene(np.zeros(5 * SR, np.float32), (SR, 2 * SR), 2, "claps", 10.0, "rain")
    pat = ClapPattern(2, (SR, 2 * SR), 3 * SR, -20.0)
    wrong = ClapPattern(3, (SR, int(1.5 * SR), 2 * SR), 3 * SR, -20.0)
    early = ClapPattern(1, (SR // 4,), SR // 2, -20.0)
    hit = score_scene(clap, [early, pat])
    assert hit.answer == [2] and hit.early == 1 and hit.latency_s == pytest.approx(1.0)
    miss = score_scene(clap, [wrong])
    dog = Scene(np.zeros(36 * SR, np.float32), (), 0, "dog", 10.0, "rain")
    fired = score_scene(dog, [pat, early])
    s = summarise([hit, miss, fired])
    assert s["cells"]["2@10"]["tp"] == 1 and s["cells"]["2@10"]["fn"] == 1
    assert s["cells"]["3@10"]["fp"] == 1 and s["cells"]["3@10"]["precision"] == 0.0
    # One 2-clap pattern in 36 s of "no command" audio (the 1-clap one is not a command).
    assert s["false_triggers"]["total"] == 1
    assert s["false_triggers"]["per_hour"] == pytest.approx(100.0)
    lo, hi = s["false_triggers"]["per_hour_ci95"]
    assert lo < 100.0 < hi and hi == pytest.approx(5.5716 * 100.0, rel=1e-3)
    lo, hi = s["cells"]["2@10"]["recall_ci95"]
    assert 0.0 < lo < 0.5 < hi < 1.0


def test_benchmark_runs_both_systems_on_the_same_scenes(shared_data, tmp_path, tiny_onnx_model):
    out = tmp_path / "res"
    argv = ["--data", str(shared_data / "esc50-16k-folds123"), "--folds", "2", "--seed", "3"]
    argv += ["--per-cell", "1", "--snrs", "20", "--model", str(tiny_onnx_model)]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    claudio, base = res["scenes"]["claudio"], res["scenes"]["baseline"]
    assert len(claudio) == len(base) == res["config"]["scenes"] > 7
    same = [(a["kind"], a["count"], a["seconds"]) for a in claudio]
    assert same == [(b["kind"], b["count"], b["seconds"]) for b in base]
    assert {a["count"] for a in claudio} == {0, 1, 2, 3, 4}
    table = (out / "table.md").read_text()
    assert "| claps | SNR dB | scenes | Claudio P | Claudio R | Claudio F1 " in table
    assert "baseline F1" in table and "per hour" in table and "p95" in table
    assert "claps settings" not in table  # the daemon's defaults
    assert (out / "f1_vs_snr.png").read_bytes()[:4] == b"\x89PNG"


def test_false_triggers_count_only_what_the_rules_act_on() -> None:
    # The baseline has no largest count: its 4 is a command under rules up to 4 claps and
    # nothing under the shipped rules (up to 3).
    knock = Scene(np.zeros(36 * SR, np.float32), (), 0, "door_knock", 10.0, "rain")
    three = ClapPattern(3, (SR, int(1.3 * SR), int(1.6 * SR)), 3 * SR, -20.0)
    four = ClapPattern(4, (5 * SR, int(5.3 * SR), int(5.6 * SR), 6 * SR), 7 * SR, -20.0)
    fired = score_scene(knock, [three, four])
    assert summarise([fired])["false_triggers"]["total"] == 2
    assert summarise([fired], max_count=3)["false_triggers"]["total"] == 1


def test_benchmark_can_use_the_shipped_rules_largest_count(
    shared_data, tmp_path, tiny_onnx_model
) -> None:
    out = tmp_path / "res3"
    argv = ["--data", str(shared_data / "esc50-16k-folds123"), "--folds", "2", "--seed", "3"]
    argv += ["--per-cell", "1", "--snrs", "20", "--no-classifier", "--max-count", "3"]
    argv += ["--clap-setting", "max_gap_s=0.8"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["max_count"] == 3
    claudio = res["scenes"]["claudio"]
    # The daemon decides at three: a fourth clap is applause, never a pattern of four, so
    # the 4-clap scenes are still played and scored but cannot be hits.
    assert all(c <= 3 for s in claudio for c in s["answer"])
    four = [s for s in claudio if s["count"] == 4]
    assert four and all(s["latency_s"] is None for s in four)
    table = (out / "table.md").read_text()
    assert "patterns of 2-3 claps" in table
    # A table measured with other settings than the defaults says so.
    assert "Claudio run with claps settings max_gap_s=0.8." in table.splitlines()[0]


def test_several_seeds_pool_into_one_summary_and_name_the_recordings(shared_data, tmp_path) -> None:
    data = shared_data / "esc50-16k-folds123"
    argv = ["--data", str(data), "--folds", "2", "--per-cell", "1", "--snrs", "20"]
    argv += ["--no-classifier", "--quiet"]
    assert main([*argv, "--seeds", "1,3", "--out", str(tmp_path / "pooled")]) == 0
    assert main([*argv, "--seed", "3", "--out", str(tmp_path / "one")]) == 0
    assert main([*argv, "--seeds", "1,3", "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())

    # Two worker processes: the same scenes and scores as one after the other.
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["scenes"] == pooled["scenes"] and two["per_seed"] == pooled["per_seed"]
    assert two["summary"] == pooled["summary"]

    # Each seed is scored on its own scene set, the same as a run with that seed alone.
    assert pooled["config"]["seeds"] == [1, 3]
    assert pooled["per_seed"]["3"] == one["summary"]
    claudio = pooled["scenes"]["claudio"]
    assert [r for r in claudio if r["seed"] == 3] == one["scenes"]["claudio"]
    assert {r["seed"] for r in claudio} == {1, 3}
    assert pooled["config"]["scenes"] == len(claudio) == 2 * one["config"]["scenes"]

    # The pooled summary counts every scene once: hits and triggers add up over the seeds.
    for system in ("claudio", "baseline"):
        total = pooled["summary"][system]
        seeds = [pooled["per_seed"][s][system] for s in ("1", "3")]
        for key, cell in total["cells"].items():
            assert cell["tp"] == sum(s["cells"].get(key, {}).get("tp", 0) for s in seeds)
            assert cell["scenes"] == sum(s["cells"].get(key, {}).get("scenes", 0) for s in seeds)
        ft = total["false_triggers"]
        assert ft["total"] == sum(s["false_triggers"]["total"] for s in seeds)
        assert ft["hours"] == pytest.approx(sum(s["false_triggers"]["hours"] for s in seeds))

    # No-command scenes that play a recording name it: a file of that category in fold 2
    # (applause: a clapping recording), and the triggers by recording add up to theirs.
    rows = {}
    with (data / "meta" / "esc50.csv").open() as fh:
        for line in fh.read().splitlines()[1:]:
            name, fold, _, category = line.split(",")[:4]
            rows[name] = (int(fold), category)
    played = [r for r in claudio if r["count"] == 0 and r["source"]]
    assert {r["kind"] for r in played} >= {"footsteps", "dog", "can_opening"}
    for r in played:
        assert rows[r["source"]] == (2, "clapping" if r["kind"] == "applause" else r["kind"])
    fired = sum(1 for r in played for c in r["answer"] if 2 <= c <= 4)
    by_source = pooled["summary"]["claudio"]["false_triggers"]["by_source"]
    assert fired > 0 and sum(v["triggers"] for v in by_source.values()) == fired
    for name, v in by_source.items():
        assert v["scenes"] == sum(1 for r in played if r["source"] == name)

    table = (tmp_path / "pooled" / "table.md").read_text()
    assert "seeds 1,3 pooled" in table and "Seed by seed:" in table
    assert "| 1 |" in table and "| 3 |" in table
    assert "false triggers by recording: " in table


def test_cross_validated_run_scores_each_fold_with_its_own_model(
    shared_data, tmp_path, tiny_onnx_model
) -> None:
    data = shared_data / "esc50-16k-folds123"
    other = tmp_path / "other.onnx"
    other.write_bytes(tiny_onnx_model.read_bytes())
    common = ["--data", str(data), "--per-cell", "1", "--snrs", "20", "--seed", "3", "--quiet"]
    cv = [*common, "--cv-model", f"2={tiny_onnx_model}", "--cv-model", f"3={other}"]
    assert main([*cv, "--out", str(tmp_path / "cv")]) == 0
    res = json.loads((tmp_path / "cv" / "results.json").read_text())
    cfg = res["config"]
    assert cfg["folds"] == [2, 3] and cfg["seeds"] == [3]
    assert cfg["model"] == {"2": str(tiny_onnx_model), "3": str(other)}
    # Claps from the folds each model trained on: every fold of the data but the test fold.
    assert cfg["clap_folds"] == {"2": [1, 3], "3": [1, 2]}

    # Fold 2's part is exactly a plain run held out the same way, fold 3's likewise.
    assert (
        main(
            [
                *common,
                "--folds",
                "2",
                "--clap-folds",
                "1,3",
                "--model",
                str(tiny_onnx_model),
                "--out",
                str(tmp_path / "f2"),
            ]
        )
        == 0
    )
    f2 = json.loads((tmp_path / "f2" / "results.json").read_text())
    assert res["per_fold"]["2"] == f2["summary"]
    claudio = res["scenes"]["claudio"]
    assert claudio[: len(f2["scenes"]["claudio"])] == f2["scenes"]["claudio"]
    assert cfg["scenes"] == len(claudio) > f2["config"]["scenes"]
    # No-command scenes play recordings of their own fold only.
    folds = {}
    with (data / "meta" / "esc50.csv").open() as fh:
        for line in fh.read().splitlines()[1:]:
            folds[line.split(",")[0]] = int(line.split(",")[1])
    played = [r["source"] for r in claudio if r["count"] == 0 and r["source"]]
    assert {folds[name] for name in played} == {2, 3}
    ft = res["summary"]["claudio"]["false_triggers"]
    per_fold = [res["per_fold"][k]["claudio"]["false_triggers"] for k in ("2", "3")]
    assert ft["total"] == sum(f["total"] for f in per_fold)
    assert ft["hours"] == pytest.approx(sum(f["hours"] for f in per_fold))
    table = (tmp_path / "cv" / "table.md").read_text()
    assert "cross-validated: folds 2,3" in table and "Fold by fold:" in table
    assert "| fold | Claudio false triggers" in table and "(fold 3)" in table


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cv-model", "9=MODEL"], "the data has no fold 9"),
        (["--cv-model", "2=MODEL", "--cv-model", "2=MODEL"], "fold 2 given twice"),
        (["--cv-model", "2"], "expected FOLD=FILE"),
        (["--cv-model", "2=missing.onnx"], "missing.onnx: file not found"),
        (["--cv-model", "2=MODEL", "--folds", "2"], "leave out --folds"),
    ],
)
def test_cross_validated_run_rejects_bad_arguments(
    shared_data, tiny_onnx_model, capsys, extra, message
) -> None:
    argv = ["--data", str(shared_data / "esc50-16k-folds123"), "--quiet"]
    argv += [a.replace("MODEL", str(tiny_onnx_model)) for a in extra]
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_verifier_sweep_reproduces_the_benchmark_from_one_replay(
    shared_data, tmp_path, tiny_onnx_model
) -> None:
    """The sweep's rows are what bench/claps.py measures with those settings, on the same scenes."""
    from bench import verifier_sweep

    common = ["--data", str(shared_data / "esc50-16k-folds123"), "--folds", "2"]
    common += ["--per-cell", "1", "--snrs", "20,0", "--quiet"]
    model = ["--model", str(tiny_onnx_model)]
    variants = ["--variant", "min_clap_score=0.9", "--variant", "confirm_with_classifier=false"]
    variants += ["--variant", "veto_labels+=speech veto_margin=0.1"]
    argv = [*common, "--seeds", "3", *model, *variants, "--out", str(tmp_path / "sweep")]
    assert verifier_sweep.main(argv) == 0
    res = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    rows = res["variants"]
    assert list(rows) == [
        "current",
        "min_clap_score=0.9",
        "confirm_with_classifier=false",
        "veto_labels+=speech veto_margin=0.1",
    ]
    assert rows["veto_labels+=speech veto_margin=0.1"]["settings"]["veto_labels"][-1] == "speech"

    def bench(*extra: str) -> dict:
        out = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        assert main([*common, "--seeds", "3", *extra, "--out", str(out)]) == 0
        return json.loads((out / "results.json").read_text())["summary"]["claudio"]

    # The check as it is: bench/claps.py's own Claudio figures, cell for cell.
    assert rows["current"]["summary"] == bench(*model)
    # The check off: the detector alone.
    assert rows["confirm_with_classifier=false"]["summary"] == bench("--no-classifier")
    # A stricter check: a replay with that setting.
    assert rows["min_clap_score=0.9"]["summary"] == bench(
        *model, "--clap-setting", "min_clap_score=0.9"
    )
    # ... and the settings matter on these scenes (the tiny model's check rejects some).
    assert rows["confirm_with_classifier=false"]["summary"] != rows["min_clap_score=0.9"]["summary"]
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| current |" in table and "| min_clap_score=0.9 |" in table

    # A model that carries its own operating point: "current" is the daemon with it, and a
    # variant still overrides it, as rules.yaml would.
    from tests.fixtures.onnx_model import build_tiny_onnx_model

    strict = build_tiny_onnx_model(tmp_path / "strict.onnx", clap_check={"min_clap_score": 0.9})
    argv = [*common, "--seeds", "3", "--model", str(strict), "--variant", "min_clap_score=0.5"]
    assert verifier_sweep.main([*argv, "--out", str(tmp_path / "sweep-strict")]) == 0
    res = json.loads((tmp_path / "sweep-strict" / "sweep.json").read_text())
    assert res["config"]["plans"]["model"]["model_clap_check"] == {"min_clap_score": 0.9}
    assert res["variants"]["current"]["summary"] == rows["min_clap_score=0.9"]["summary"]
    assert res["variants"]["min_clap_score=0.5"]["summary"] == rows["current"]["summary"]


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("min_gap_s=0.2", "changes what the detector hears"),
        ("min_clap_score=2", "min_clap_score"),
        ("nonsense=1", "no clap setting 'nonsense'"),
        ("veto_margin+=0.1", "not a list setting"),
        ("min_clap_score", "is not KEY=VALUE"),
    ],
)
def test_verifier_sweep_rejects_variants_it_cannot_score(variant, message) -> None:
    from bench.verifier_sweep import parse_variant

    with pytest.raises(ValueError, match=message):
        parse_variant(variant)


def test_verifier_sweep_chooses_each_folds_setting_on_the_other_folds() -> None:
    """A setting chosen on the scenes it is then scored on flatters it; each fold gets the
    variant the other folds prefer (within the false-trigger limit, then most commands)."""
    from bench.claps import SceneResult
    from bench.verifier_sweep import choose_on_others

    def plan(triggers: int, hits: int) -> list[SceneResult]:
        claps = [
            SceneResult("claps", "rain", 10.0, 2, 5.0, [2] if i < hits else [], 0, 0.9)
            for i in range(10)
        ]
        hour = SceneResult("can_opening", "rain", 10.0, 0, 3600.0, [2] * triggers, 0, None)
        return [*claps, hour]

    scored = {
        "loose": {"a": plan(2, 10), "b": plan(2, 10), "c": plan(0, 10)},
        "strict": {"a": plan(0, 8), "b": plan(0, 8), "c": plan(0, 8)},
    }
    chosen = choose_on_others(scored, 1.0, 4)
    # a and b each see one hour with 2 triggers and one without (1.0 an hour: within the
    # limit, and more commands); c sees 4 in two hours and takes the strict check.
    assert chosen["per_plan"] == {"a": "loose", "b": "loose", "c": "strict"}
    summary = chosen["summary"]
    assert summary["false_triggers"]["total"] == 4
    assert summary["cells"]["2@10"]["tp"] == 28
    # Nothing within the limit anywhere: the fewest false triggers.
    assert set(choose_on_others(scored, 0.1, 4)["per_plan"].values()) == {"strict"}


def test_verifier_sweep_chooses_only_across_folds(shared_data, tiny_onnx_model, capsys) -> None:
    from bench import verifier_sweep

    argv = ["--data", str(shared_data / "esc50-16k-folds123"), "--model", str(tiny_onnx_model)]
    with pytest.raises(SystemExit):
        verifier_sweep.main([*argv, "--choose-per-hour", "1"])
    assert "--choose-per-hour needs --cv-model" in capsys.readouterr().err
