"""The clap benchmark: exact pattern detection, false triggers and latency, Claudio vs baseline.

    .venv/bin/python bench/claps.py --data ../shared/data/esc50-16k-folds123 \\
        --data ../shared/data/esc50-fold4-dev (--seed 0 | --seeds 0,1,2,3,4) --per-cell 12 \\
        --snrs 20,10,5,0 (--model FILE | --no-classifier) [--folds 1,2] [--max-count 4] \\
        --out bench/results/claps
    ... --cv-model 1=fold1.onnx --cv-model 2=fold2.onnx ...   (cross-validated)

Scenes come from `bench.scenes` (any folder in ESC-50 layout, fixed by the seed): patterns
of 1-4 real claps with gaps of 0.2-0.7 s over real backgrounds at each SNR, and scenes
with no command (knocks in twos and threes, footsteps, dog, glass, coughing, laughing,
mouse clicks, can opening, applause). Every scene is replayed block by block through the
daemon's own `Pipeline` (rules with clap triggers for 1..N claps, N = --max-count, 4 by
default, so the grouper decides "at once" at N) and, on the same audio, through the
amplitude-threshold baseline (`bench.baseline`). The largest count matters: after it the
grouper waits a short guard for more claps (applause) instead of the full pause, so
`--max-count 3` measures what the shipped rules (two and three claps) do; their 4-clap
scenes then have no right answer but "nothing".

Scoring, the same for both systems:

* clap scenes: the patterns reported whose first clap is at or after the scene's first
  true clap (minus 50 ms) are the answer. Exactly one pattern with the true count is a
  true positive for that count; otherwise a false negative for the true count, and every
  reported pattern is a false positive for its own count. Precision, recall and F1 per
  (count, SNR); patterns before the first clap are counted separately (`early`).
* scenes with no command: every pattern of 2..N claps (what a rule would act on) is a
  false trigger; reported per hour of such audio.
* decision latency: decided sample minus the last true clap, for true positives.

With `--seeds`, each seed's scene set is scored on its own and all scenes are pooled:
the table, plot and `summary` are the pooled figures, `per_seed` holds each seed's, and
the table ends with one row a seed. False triggers name the recordings they came from.

With `--cv-model FOLD=FILE` for several folds (the fold models of `scripts/crossval.sh`),
each fold's scenes are scored with the model trained without that fold, the claps cut from
the other folds, and everything is pooled (`per_fold` and a row a fold): every distractor
recording is heard once by a model that never trained on it.

Writes `results.json`, `table.md` and `f1_vs_snr.png` to --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import scenes as sc  # noqa: E402
from bench.baseline import ThresholdClapCounter, threshold_from_claps  # noqa: E402
from bench.intervals import rate_interval, wilson_interval  # noqa: E402
from claudio_daemon.events import ClapPattern  # noqa: E402

log = logging.getLogger("bench.claps")

SR = sc.SAMPLE_RATE
BLOCK = 1024
#: The largest clap count of the bench's rules unless --max-count says otherwise.
MAX_COUNT = 4
#: A pattern whose first clap is this much before the first true clap still answers it.
EARLY_SLACK = int(0.05 * SR)


def bench_rules(model: Path | None, max_count: int = MAX_COUNT) -> str:
    """rules.yaml text with one clap trigger per count 1..max_count."""
    lines = [
        f"model: {{path: {model if model else 'null'}, threads: 1, classify_every_s: 10.0}}",
        "appliances:",
        *(f"  a{n}: {{preset: tasmota, topic: a{n}}}" for n in range(1, max_count + 1)),
        "triggers:",
        *(f"  - {{claps: {n}, actions: [a{n}: toggle]}}" for n in range(1, max_count + 1)),
    ]
    return "\n".join(lines) + "\n"


SYSTEMS = ("claudio", "baseline")


# --------------------------------------------------------------------------- systems


Runner = Callable[[np.ndarray], list[ClapPattern]]
K = TypeVar("K")


def claudio_runner(
    model: Path | None,
    clap_settings: dict[str, str] | None = None,
    max_count: int = MAX_COUNT,
) -> Runner:
    """A fresh daemon `Pipeline` per scene, fed in sound-card-sized blocks.

    Sound-event classification (not measured here) runs only every 10 s to save time; the
    clap patterns' classifier check runs as live.
    """
    from claudio_daemon.model.classifier import OnnxClassifier
    from claudio_daemon.pipeline import Pipeline
    from claudio_daemon.rules.loader import parse_rules

    text = bench_rules(model, max_count)
    if clap_settings:
        text += "claps:\n" + "".join(f"  {k}: {v}\n" for k, v in clap_settings.items())
    rules = parse_rules(text, "bench-rules.yaml")
    assert rules.max_clap_count() == max_count
    classifier = OnnxClassifier(model, device="cpu", threads=1) if model else None

    def run(audio: np.ndarray) -> list[ClapPattern]:
        pipe = Pipeline(rules, classifier)
        out: list[ClapPattern] = []
        for i in range(0, audio.size, BLOCK):
            out += [e for e in pipe.process(audio[i : i + BLOCK]) if isinstance(e, ClapPattern)]
        return out

    return run


def baseline_runner(threshold: float) -> Runner:
    def run(audio: np.ndarray) -> list[ClapPattern]:
        counter = ThresholdClapCounter(threshold, SR)
        out: list[ClapPattern] = []
        for i in range(0, audio.size, BLOCK):
            out += counter.push(audio[i : i + BLOCK])
        out += counter.push(np.zeros(2 * SR, np.float32))  # let a last count finish
        return out

    return run


def baseline_threshold(claps: Sequence[np.ndarray]) -> float:
    gains = [10 ** ((sc.EVENT_LEVEL_DB - sc.peak_window_db(c)) / 20) for c in claps]
    return threshold_from_claps(list(claps), gains)


# --------------------------------------------------------------------------- scoring


@dataclass
class SceneResult:
    kind: str
    background: str
    snr_db: float
    count: int
    seconds: float
    #: Pattern counts reported (from the first clap on, for clap scenes).
    answer: list[int]
    early: int
    latency_s: float | None
    #: The recording a no-command scene plays ("" for built scenes).
    source: str = ""
    #: The scene set's seed (several seeds pool into one summary).
    seed: int | None = None


def score_scene(
    scene: sc.Scene, patterns: list[ClapPattern], seed: int | None = None
) -> SceneResult:
    if scene.count > 0:
        first = scene.clap_samples[0] - EARLY_SLACK
        answer = [p for p in patterns if p.clap_samples[0] >= first]
        early = len(patterns) - len(answer)
    else:
        answer, early = patterns, 0
    latency = None
    if scene.count > 0 and len(answer) == 1 and answer[0].count == scene.count:
        latency = (answer[0].decided_sample - scene.clap_samples[-1]) / SR
    return SceneResult(
        kind=scene.kind,
        background=scene.background,
        snr_db=scene.snr_db,
        count=scene.count,
        seconds=scene.audio.size / SR,
        answer=[p.count for p in answer],
        early=early,
        latency_s=latency,
        source=str(scene.info.get("source", "")),
        seed=seed,
    )


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


def summarise(results: list[SceneResult], max_count: int = MAX_COUNT) -> dict:
    """Per (count, SNR) P/R/F1, false triggers per hour, latency percentiles."""
    tp: dict = defaultdict(int)
    fp: dict = defaultdict(int)
    fn: dict = defaultdict(int)
    n_scenes: dict = defaultdict(int)
    by_bg: dict = defaultdict(lambda: [0, 0])
    latencies = []
    early = 0
    for r in results:
        if r.count == 0:
            continue
        key = (r.count, r.snr_db)
        n_scenes[key] += 1
        early += r.early
        hit = r.answer == [r.count]
        by_bg[(r.background, r.snr_db)][0] += hit
        by_bg[(r.background, r.snr_db)][1] += 1
        if hit:
            tp[key] += 1
            latencies.append(r.latency_s)
        else:
            fn[key] += 1
            for c in r.answer:
                fp[(c, r.snr_db)] += 1
    cells = {}
    # A wrong count is a false positive of its own cell, even with no scenes of that count;
    # counts above max_count (the baseline has no limit) only enter the per-SNR totals.
    for key in sorted(set(n_scenes) | {k for k in fp if k[0] <= max_count}):
        cells[f"{key[0]}@{key[1]:g}"] = {
            "count": key[0],
            "snr_db": key[1],
            "scenes": n_scenes.get(key, 0),
            **_prf(tp[key], fp[key], fn[key]),
            "recall_ci95": wilson_interval(tp[key], tp[key] + fn[key]),
        }
    per_snr = {}
    for snr in sorted({k[1] for k in n_scenes}, reverse=True):
        keys = [k for k in n_scenes if k[1] == snr]
        t = sum(tp[k] for k in keys)
        f = sum(v for k, v in fp.items() if k[1] == snr)
        per_snr[f"{snr:g}"] = _prf(t, f, sum(fn[k] for k in keys)) | {"snr_db": snr}
    neg = [r for r in results if r.count == 0]
    hours = sum(r.seconds for r in neg) / 3600
    triggers = defaultdict(int)
    seconds = defaultdict(float)
    # Per recording: which ones the triggers come from, and how often each was played.
    by_source: dict[str, dict] = {}
    for r in neg:
        fired = sum(1 for c in r.answer if 2 <= c <= max_count)
        triggers[r.kind] += fired
        seconds[r.kind] += r.seconds
        if r.source:
            entry = by_source.setdefault(r.source, {"kind": r.kind, "triggers": 0, "scenes": 0})
            entry["triggers"] += fired
            entry["scenes"] += 1
    total = sum(triggers.values())
    lat = np.array(latencies, dtype=float)
    return {
        "max_count": max_count,
        "cells": cells,
        "per_snr": per_snr,
        "by_background": {
            f"{bg}@{snr:g}": {"exact": h, "scenes": n}
            for (bg, snr), (h, n) in sorted(by_bg.items())
        },
        "early_patterns": early,
        "false_triggers": {
            "total": total,
            "hours": hours,
            "per_hour": total / hours if hours else 0.0,
            "per_hour_ci95": rate_interval(total, hours) if hours else None,
            "by_kind": {
                k: {"triggers": triggers[k], "per_hour": triggers[k] / (seconds[k] / 3600)}
                for k in sorted(triggers)
            },
            "by_source": {
                k: v
                for k, v in sorted(by_source.items(), key=lambda kv: (-kv[1]["triggers"], kv[0]))
                if v["triggers"]
            },
        },
        "latency_s": {
            "p50": float(np.percentile(lat, 50)) if lat.size else None,
            "p95": float(np.percentile(lat, 95)) if lat.size else None,
            "n": int(lat.size),
        },
    }


# --------------------------------------------------------------------------- reporting


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(false_triggers: dict) -> str:
    ci = false_triggers.get("per_hour_ci95")
    return "" if ci is None else f" ({ci[0]:.1f}-{ci[1]:.1f})"


def markdown_table(summary: dict[str, dict], header: str = "") -> str:
    """Both systems side by side: per (count, SNR), then false triggers and latency."""
    c, b = summary["claudio"], summary["baseline"]
    lines = [header] if header else []
    lines += [
        "| claps | SNR dB | scenes | Claudio P | Claudio R | Claudio F1 "
        "| baseline P | baseline R | baseline F1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # Cells with scenes (the same for both systems: they ran on the same scenes).
    cells = [v for v in c["cells"].values() if v["scenes"]]
    order = sorted(cells, key=lambda v: (-v["snr_db"], v["count"]))
    for cell in order:
        key = f"{cell['count']}@{cell['snr_db']:g}"
        bc = b["cells"][key]
        lines.append(
            f"| {cell['count']} | {cell['snr_db']:g} | {cell['scenes']} | "
            f"{_f(cell['precision'])} | {_f(cell['recall'])} | **{_f(cell['f1'])}** | "
            f"{_f(bc['precision'])} | {_f(bc['recall'])} | {_f(bc['f1'])} |"
        )
    for snr, v in c["per_snr"].items():
        lines.append(
            f"| all | {snr} | | {_f(v['precision'])} | {_f(v['recall'])} | **{_f(v['f1'])}** | "
            f"{_f(b['per_snr'][snr]['precision'])} | {_f(b['per_snr'][snr]['recall'])} | "
            f"{_f(b['per_snr'][snr]['f1'])} |"
        )
    cf, bf = c["false_triggers"], b["false_triggers"]
    lines += [
        "",
        f"False triggers (patterns of 2-{c['max_count']} claps in {cf['hours'] * 60:.1f} min of "
        "audio with no command):",
        "",
        "| scene kind | Claudio triggers | Claudio per hour | baseline triggers "
        "| baseline per hour |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, v in cf["by_kind"].items():
        bv = bf["by_kind"][kind]
        lines.append(
            f"| {kind} | {v['triggers']} | {v['per_hour']:.1f} | {bv['triggers']} | "
            f"{bv['per_hour']:.1f} |"
        )
    lines.append(
        f"| **all** | {cf['total']} | **{cf['per_hour']:.1f}**{_ci(cf)} | {bf['total']} | "
        f"{bf['per_hour']:.1f}{_ci(bf)} |"
    )
    lines += ["", "Per hour: 95 % interval (exact Poisson) in brackets."]
    sources = cf.get("by_source") or {}
    if sources:
        lines += [
            "",
            "Claudio's false triggers by recording: "
            + ", ".join(
                f"{name} ({v['kind']}) {v['triggers']} in {v['scenes']} scene"
                + ("s" if v["scenes"] != 1 else "")
                for name, v in sources.items()
            )
            + ".",
        ]
    cl, bl = c["latency_s"], b["latency_s"]
    lines += [
        "",
        f"Decision latency after the last clap (exact detections): Claudio p50 {_f(cl['p50'])} s, "
        f"p95 {_f(cl['p95'])} s; baseline p50 {_f(bl['p50'])} s, p95 {_f(bl['p95'])} s.",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colours = {1: "tab:gray", 2: "tab:blue", 3: "tab:orange", 4: "tab:green"}
    for system, style in (("claudio", "-"), ("baseline", "--")):
        cells = [v for v in summary[system]["cells"].values() if v["scenes"]]
        for n in sorted({v["count"] for v in cells}):
            pts = sorted((v["snr_db"], v["f1"]) for v in cells if v["count"] == n)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                marker="o" if system == "claudio" else "x",
                color=colours.get(n, "black"),
                label=f"{system} {n} clap{'s' if n > 1 else ''}",
            )
    ax.axhline(0.95, color="red", lw=0.8, ls=":", label="goal (2-3 claps, >= 10 dB)")
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("F1, exact pattern")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def run_benchmark(
    data: Sequence[Path],
    *,
    seed: int,
    per_cell: int,
    snrs: Sequence[float],
    model: Path | None,
    folds: Sequence[int] | None = None,
    clap_folds: Sequence[int] | None = None,
    distractors: Sequence[str] = sc.DISTRACTOR_CLIPS,
    progress: bool = True,
    clap_settings: dict[str, str] | None = None,
    max_count: int = MAX_COUNT,
) -> dict:
    """Build the scenes, replay them through both systems and score them."""
    t0 = time.perf_counter()
    clap_folds = folds if clap_folds is None else clap_folds
    scenes = sc.build_scene_set(
        list(data),
        seed,
        per_cell,
        snrs=snrs,
        folds=folds,
        clap_folds=clap_folds,
        distractors=distractors,
    )
    claps = sc.cut_single_claps(list(data), folds=clap_folds)
    threshold = baseline_threshold(claps)
    t_build = time.perf_counter() - t0
    runners = {
        "claudio": claudio_runner(model, clap_settings, max_count),
        "baseline": baseline_runner(threshold),
    }
    results: dict[str, list[SceneResult]] = {s: [] for s in SYSTEMS}
    timing = dict.fromkeys(SYSTEMS, 0.0)
    audio_s = sum(s.audio.size for s in scenes) / SR
    items = scenes
    if progress:
        from tqdm import tqdm

        items = tqdm(scenes, desc="scenes", unit="scene", file=sys.stderr)
    for scene in items:
        for system, runner in runners.items():
            t = time.perf_counter()
            patterns = runner(scene.audio)
            timing[system] += time.perf_counter() - t
            results[system].append(score_scene(scene, patterns, seed))
    summary = {s: summarise(results[s], max_count) for s in SYSTEMS}
    return {
        "config": {
            "data": [str(d) for d in data],
            "seed": seed,
            "per_cell": per_cell,
            "snrs": list(snrs),
            "folds": None if folds is None else list(folds),
            "clap_folds": None if clap_folds is None else list(clap_folds),
            "model": str(model) if model else None,
            "clap_settings": clap_settings or {},
            "max_count": max_count,
            "single_claps": len(claps),
            "baseline_threshold": threshold,
            "scenes": len(scenes),
            "audio_s": audio_s,
            "build_s": t_build,
            "replay_s": timing,
        },
        "summary": summary,
        "scenes": {s: [r.__dict__ for r in results[s]] for s in SYSTEMS},
    }


def pool_runs(runs: dict[int, dict], by: str = "seed") -> dict:
    """Several runs as one: every scene scored once, the summary over all of them.

    One seed's 12 scenes a cell move a recall by 0.08 and its hour of distractors holds a
    handful of triggers at most; the pooled counts give the figures (and intervals) that
    several seeds (or folds, `by="fold"`) together support, and `per_seed` (`per_fold`)
    keeps what each run said.
    """
    first = next(iter(runs.values()))["config"]
    max_count = first["max_count"]
    scenes = {
        system: [r for run in runs.values() for r in run["scenes"][system]] for system in SYSTEMS
    }
    summary = {
        system: summarise([SceneResult(**r) for r in scenes[system]], max_count)
        for system in SYSTEMS
    }
    config = dict(first)
    config.update(
        {by: None, f"{by}s": list(runs)},
        scenes=sum(run["config"]["scenes"] for run in runs.values()),
        audio_s=sum(run["config"]["audio_s"] for run in runs.values()),
        build_s=sum(run["config"]["build_s"] for run in runs.values()),
        replay_s={
            system: sum(run["config"]["replay_s"][system] for run in runs.values())
            for system in SYSTEMS
        },
    )
    return {
        "config": config,
        "summary": summary,
        f"per_{by}": {str(key): run["summary"] for key, run in runs.items()},
        "scenes": scenes,
    }


def seed_table(per_seed: dict[str, dict], column: str = "seed") -> str:
    """Claudio run by run (seed or fold): false triggers, 2/3-clap F1, all counts' F1 per SNR."""
    any_seed = next(iter(per_seed.values()))["claudio"]
    snrs = list(any_seed["per_snr"])
    counts = [n for n in (2, 3) if n <= any_seed["max_count"]]
    label = " / ".join(str(n) for n in counts)
    lines = [
        f"| {column} | Claudio false triggers (per hour) | "
        + " | ".join(f"{label}-clap F1, {snr} dB" for snr in snrs)
        + " | all counts F1, "
        + " / ".join(snrs)
        + " dB |",
        "|---:|---:|" + "---|" * len(snrs) + "---|",
    ]
    for seed, summary in per_seed.items():
        c = summary["claudio"]
        ft = c["false_triggers"]
        cells = [
            " / ".join(_f(c["cells"].get(f"{n}@{snr}", {}).get("f1")) for n in counts)
            for snr in snrs
        ]
        lines.append(
            f"| {seed} | {ft['total']} ({ft['per_hour']:.1f}) | "
            + " | ".join(cells)
            + " | "
            + " / ".join(_f(c["per_snr"][snr]["f1"]) for snr in snrs)
            + " |"
        )
    return "\n".join(lines) + "\n"


def run_all(
    tasks: dict[K, dict],
    jobs: int = 1,
    progress: bool = True,
    fn: Callable[..., dict] = run_benchmark,
) -> dict[K, dict]:
    """`fn(**kwargs, progress=...)` (`run_benchmark`) for every task, in `jobs` processes.

    Each task builds its scenes from its own seed and replays them with fresh pipelines, so
    the results are the same in any order and any number of processes; only the wall time
    changes (the replay is single-threaded, and a full cross-validated run takes most of an
    hour on one core).
    """
    if jobs <= 1 or len(tasks) <= 1:
        out = {}
        for i, (key, kwargs) in enumerate(tasks.items()):
            if progress and len(tasks) > 1:
                print(f"{key} ({i + 1} of {len(tasks)})", file=sys.stderr)
            out[key] = fn(**kwargs, progress=progress)
        return out
    ctx = multiprocessing.get_context("spawn")  # no onnxruntime or tqdm threads to fork
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {k: pool.submit(fn, **kw, progress=False) for k, kw in tasks.items()}
        out = {}
        for key, future in futures.items():
            out[key] = future.result()
            if progress:
                print(f"{key} done ({len(out)} of {len(tasks)})", file=sys.stderr)
        return out


#: A cross-validated run's plan for one fold: (its model, [the fold], the other folds).
FoldPlan = tuple[Path, list[int], list[int]]


def run_crossval(
    data: Sequence[Path],
    plans: dict[int, FoldPlan],
    seeds: Sequence[int],
    progress: bool = True,
    jobs: int = 1,
    **options,
) -> dict:
    """Every fold's no-command scenes scored with the model that never heard that fold.

    One held-out fold holds few recordings of each distractor (eight steps, eight cans), so
    one model's false triggers an hour hang on a handful of recordings. With a model per
    fold (`scripts/crossval.sh`), every recording is held out once: the claps come from the
    other folds (the model's training folds, as with `--clap-folds`), the distractors and
    backgrounds from the test fold, each fold over the same seeds, all pooled.
    """
    tasks = {
        f"fold {fold} seed {seed}": dict(
            data=data, seed=seed, model=model, folds=folds, clap_folds=clap_folds, **options
        )
        for fold, (model, folds, clap_folds) in plans.items()
        for seed in seeds
    }
    runs = run_all(tasks, jobs, progress)
    per_fold = {
        fold: pool_runs({seed: runs[f"fold {fold} seed {seed}"] for seed in seeds})
        for fold in plans
    }
    res = pool_runs(per_fold, by="fold")
    fold_cfg = {str(k): r["config"] for k, r in per_fold.items()}
    res["config"].update(
        clap_folds={k: c["clap_folds"] for k, c in fold_cfg.items()},
        model={k: c["model"] for k, c in fold_cfg.items()},
        single_claps={k: c["single_claps"] for k, c in fold_cfg.items()},
        baseline_threshold={k: c["baseline_threshold"] for k, c in fold_cfg.items()},
    )
    return res


def cv_plans(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict[int, FoldPlan]:
    """`--cv-model FOLD=FILE` arguments as a plan per fold; problems are argparse errors."""
    if args.folds is not None or args.clap_folds is not None:
        ap.error("--cv-model chooses the folds itself: leave out --folds and --clap-folds")
    all_folds = sc.esc50_folds(args.data)
    if len(all_folds) < 2:
        ap.error("--cv-model: the data holds one fold; the claps need another")
    plans: dict[int, FoldPlan] = {}
    for spec in args.cv_model:
        fold_text, sep, path = spec.partition("=")
        if not sep or not fold_text.strip().isdigit() or not path:
            ap.error(f"--cv-model {spec}: expected FOLD=FILE, e.g. 2=fold2.int8.onnx")
        fold = int(fold_text)
        if fold in plans:
            ap.error(f"--cv-model {spec}: fold {fold} given twice")
        if fold not in all_folds:
            ap.error(
                f"--cv-model {spec}: the data has no fold {fold} "
                f"(it has {', '.join(map(str, all_folds))})"
            )
        if not Path(path).is_file():
            ap.error(f"--cv-model {spec}: {path}: file not found")
        plans[fold] = (Path(path), [fold], [f for f in all_folds if f != fold])
    return dict(sorted(plans.items()))


def _header(cfg: dict, title: str) -> str:
    claps, threshold = cfg["single_claps"], cfg["baseline_threshold"]
    if isinstance(claps, dict):  # cross-validated: one clap set and threshold per fold
        claps_text = "single claps " + ", ".join(f"{n} (fold {k})" for k, n in claps.items())
        thr_text = "baseline thresholds " + ", ".join(f"{v:.3f}" for v in threshold.values())
    else:
        claps_text = f"{claps} single claps"
        thr_text = f"baseline threshold {threshold:.3f}"
    # A table must say which daemon it measured: a setting changed with --clap-setting
    # would otherwise read as the defaults' figures.
    changed = cfg.get("clap_settings") or {}
    settings_text = (
        "; Claudio run with claps settings " + ", ".join(f"{k}={v}" for k, v in changed.items())
        if changed
        else ""
    )
    return (
        f"Clap benchmark ({title}): {cfg['scenes']} scenes, {cfg['audio_s'] / 60:.1f} min of "
        f"audio, {claps_text}; {thr_text}{settings_text}. Replay CPU: Claudio "
        f"{cfg['replay_s']['claudio']:.1f} s, baseline {cfg['replay_s']['baseline']:.1f} s.\n"
    )


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="folder in ESC-50 layout (meta/esc50.csv, audio/); repeatable",
    )
    seed = ap.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=0)
    seed.add_argument(
        "--seeds",
        type=_ints,
        default=None,
        help="several scene sets (e.g. 0,1,2,3,4), scored one by one and pooled",
    )
    ap.add_argument("--per-cell", type=int, default=12, help="scenes per (kind, SNR) cell")
    ap.add_argument("--snrs", type=_floats, default=[20.0, 10.0, 5.0, 0.0])
    ap.add_argument(
        "--folds",
        type=_ints,
        default=None,
        help="only these ESC-50 folds (e.g. 1,2 to tune, 3,4 to check)",
    )
    ap.add_argument(
        "--clap-folds",
        type=_ints,
        default=None,
        help="cut the claps from these folds instead of --folds "
        "(distractors held out from a model that trained on the claps' folds)",
    )
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", type=Path, help="ONNX model (its classifier confirms patterns)")
    g.add_argument("--no-classifier", action="store_true", help="detector and grouper only")
    g.add_argument(
        "--cv-model",
        action="append",
        metavar="FOLD=FILE",
        help="cross-validated: score fold FOLD's scenes with FILE, a model trained without "
        "that fold (repeatable, e.g. one per fold from scripts/crossval.sh); claps come "
        "from the other folds",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "claps")
    ap.add_argument(
        "--clap-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a `claps:` setting of the daemon (repeatable)",
    )
    ap.add_argument(
        "--max-count",
        type=int,
        choices=(2, 3, 4),
        default=MAX_COUNT,
        help="largest clap count of the bench's rules (3 = the shipped rules' largest)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="replay several seeds (and folds) at once in this many processes",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for d in args.data:
        if not (d / "meta" / "esc50.csv").is_file():
            ap.error(f"--data {d}: not an ESC-50 layout folder (meta/esc50.csv missing)")
    if args.model is not None and not args.model.is_file():
        ap.error(f"--model {args.model}: file not found")

    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: must be at least 1")
    seeds = args.seeds or [args.seed]
    if len(set(seeds)) != len(seeds):
        ap.error(f"--seeds {','.join(map(str, seeds))}: a seed repeated")
    options = dict(
        per_cell=args.per_cell,
        snrs=args.snrs,
        clap_settings=dict(kv.split("=", 1) for kv in args.clap_setting),
        max_count=args.max_count,
    )
    if args.cv_model:
        res = run_crossval(
            args.data, cv_plans(ap, args), seeds, progress=not args.quiet, jobs=args.jobs, **options
        )
        cfg = res["config"]
        seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))}"
        title = (
            f"cross-validated: folds {','.join(map(str, cfg['folds']))}, each scored with a "
            f"model trained without it, claps from the other folds; {seed_text}, "
            f"{cfg['per_cell']}/cell"
            + (f", rules up to {cfg['max_count']} claps" if cfg["max_count"] != MAX_COUNT else "")
        )
        table = markdown_table(res["summary"], _header(cfg, title))
        table += "\nFold by fold:\n\n" + seed_table(res["per_fold"], column="fold")
        return _write(res, table, title, args.out)
    tasks = {
        f"seed {seed}": dict(
            data=args.data,
            seed=seed,
            model=args.model,
            folds=args.folds,
            clap_folds=args.clap_folds,
            **options,
        )
        for seed in seeds
    }
    done = run_all(tasks, args.jobs, progress=not args.quiet)
    runs = {seed: done[f"seed {seed}"] for seed in seeds}
    res = runs[seeds[0]] if len(seeds) == 1 else pool_runs(runs)
    cfg = res["config"]
    seed_text = (
        f"seed {cfg['seed']}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))} pooled"
    )
    title = (
        f"{seed_text}, {cfg['per_cell']}/cell, folds {cfg['folds'] or 'all'}, "
        + (
            f"claps from folds {cfg['clap_folds']}, "
            if cfg["clap_folds"] not in (None, cfg["folds"])
            else ""
        )
        + f"{'model ' + Path(cfg['model']).name if cfg['model'] else 'no classifier'}"
        + (f", rules up to {cfg['max_count']} claps" if cfg["max_count"] != MAX_COUNT else "")
    )
    table = markdown_table(res["summary"], _header(cfg, title))
    if len(seeds) > 1:
        table += "\nSeed by seed:\n\n" + seed_table(res["per_seed"])
    return _write(res, table, title, args.out)


def _write(res: dict, table: str, title: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "table.md").write_text(table)
    plot(res["summary"], out / "f1_vs_snr.png", "Exact clap-pattern F1: " + title)
    print(table)
    print(f"wrote {out}/results.json, table.md, f1_vs_snr.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
