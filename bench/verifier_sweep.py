"""How the clap check's settings trade real commands against false triggers, from one replay.

    .venv/bin/python bench/verifier_sweep.py --data ../shared/data/esc50-16k-folds123 \\
        --data ../shared/data/esc50-fold4-dev --seeds 0,1,2,3,4 \\
        (--model FILE --folds 4 --clap-folds 1,2,3 | --cv-model 2=FILE --cv-model 3=FILE ...) \\
        --variant min_clap_score=0.4 --variant min_clap_score=0.5 \\
        --variant "veto_labels+=clock_tick" --out bench/results/verifier

The classifier's verdict on a pattern never feeds back into the detector or the grouper:
a rejected pattern is dropped, one counted smaller is reported smaller, nothing else
changes. So one replay of `bench/claps.py`'s scenes with the check switched off, keeping
every pattern the detector reports with the classifier's scores for its audio, for each
clap's own and for the audio around it (what the live check hears), tells exactly what
the daemon would have reported under any setting of the check: `min_clap_score`,
`min_single_clap_score`, `min_clap_rise`, `min_clap_evidence`, `veto_labels`, `veto_margin`,
`veto_min_score`, `clap_label`. Each variant is scored like
`bench/claps.py` scores Claudio (its "current" row is that benchmark's Claudio figures on
the same scenes), so defaults can be chosen on one fold and checked on others, or
cross-validated, without a replay per setting.

A variant is one or more `KEY=VALUE` settings separated by spaces (values in YAML, as in
rules.yaml's `claps:` section); `KEY+=VALUE` adds comma-separated labels to a list.
Writes `sweep.json` and `sweep.md` to --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import scenes as sc  # noqa: E402
from bench.claps import (  # noqa: E402
    BLOCK,
    MAX_COUNT,
    SceneResult,
    _f,
    _floats,
    _ints,
    bench_rules,
    cv_plans,
    run_all,
    score_scene,
    summarise,
)
from claudio_daemon.detect.settings import ClapSettings  # noqa: E402
from claudio_daemon.detect.verify import ClapVerifier  # noqa: E402
from claudio_daemon.events import ClapPattern  # noqa: E402

#: The settings of the check itself; the rest (detector, grouping, the classified segment's
#: margins) would change what the replay hears, so a variant may not touch them.
CHECK_KEYS = frozenset(
    {
        "confirm_with_classifier",
        "clap_label",
        "veto_labels",
        "veto_margin",
        "veto_min_score",
        "min_clap_score",
        "min_single_clap_score",
        "min_clap_rise",
        "min_clap_evidence",
    }
)

#: Every pattern the detector reported in one scene, with the classifier's scores for its
#: audio, for each clap's own and for the audio around it by side (`context_spans`).
Heard = list[
    tuple[ClapPattern, dict[str, float], list[dict[str, float]], dict[str, dict[str, float]]]
]


@dataclass(frozen=True)
class Variant:
    name: str
    settings: ClapSettings


def parse_variant(text: str, base: ClapSettings | None = None) -> Variant:
    """`"min_clap_score=0.5 veto_labels+=clock_tick"` -> settings (validated like rules.yaml)."""
    base = base or ClapSettings()
    values = base.model_dump()
    changed: set[str] = set()
    for item in text.split():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {text!r}: {item!r} is not KEY=VALUE")
        append = key.endswith("+")
        key = key.removesuffix("+")
        if key in values and key not in CHECK_KEYS:
            raise ValueError(
                f"variant {text!r}: {key} changes what the detector hears, not the clap "
                "check; sweep it with bench/claps.py --clap-setting"
            )
        if append:
            if not isinstance(values.get(key), list):
                raise ValueError(f"variant {text!r}: {key} is not a list setting")
            values[key] = [*values[key], *(v.strip() for v in raw.split(",") if v.strip())]
        elif key not in values:
            raise ValueError(f"variant {text!r}: no clap setting {key!r}")
        else:
            values[key] = yaml.safe_load(raw)
        changed.add(key)
    try:
        # Only what the variant names counts as set: the rest stays the daemon's default,
        # which a model's own clap_check replaces (`replay_task`), as in a live run.
        settings = ClapSettings.model_validate(
            {**base.model_dump(exclude_unset=True), **{k: values[k] for k in changed}}
        )
    except Exception as exc:  # pydantic's message names the field
        raise ValueError(f"variant {text!r}: {exc}") from exc
    return Variant(text, settings)


def replay(scene: sc.Scene, rules, classifier) -> Heard:  # noqa: ANN001 - daemon types
    """The daemon's pipeline with the check off; each pattern classified as the check would."""
    from claudio_daemon.pipeline import Pipeline

    pipe = Pipeline(rules, classifier)
    heard: Heard = []
    for i in range(0, scene.audio.size, BLOCK):
        for event in pipe.process(scene.audio[i : i + BLOCK]):
            if isinstance(event, ClapPattern):
                scores = classifier.classify_audio(pipe.claps.segment(event))
                each = [classifier.classify_audio(a) for a in pipe.claps.clap_segments(event)]
                around = pipe.claps.context_segments(event)
                context = {k: classifier.classify_audio(a) for k, a in around.items()}
                heard.append((event, scores, each, context))
    return heard


def verdicts(variant: Variant, heard: Heard) -> list[ClapPattern]:
    """The patterns the daemon would have reported with this variant's clap check."""
    if not heard:
        return []
    verifier = ClapVerifier(heard[0][1].keys(), variant.settings, sc.SAMPLE_RATE)
    counted = (
        verifier.check(p, scores, lambda e=each: e, lambda c=context: c)[0]
        for p, scores, each, context in heard
    )
    return [p for p in counted if p is not None]


def replay_task(
    data: Sequence[Path],
    model: Path,
    folds: list[int] | None,
    clap_folds: list[int] | None,
    seed: int,
    variants: Sequence[Variant],
    per_cell: int,
    snrs: Sequence[float],
    max_count: int,
    progress: bool = False,
) -> dict:
    """One seed's scenes replayed once; each variant's scored scenes (picklable, for --jobs)."""
    from claudio_daemon.model.classifier import OnnxClassifier
    from claudio_daemon.rules.loader import parse_rules

    text = bench_rules(model, max_count) + "claps:\n  confirm_with_classifier: false\n"
    rules = parse_rules(text, "sweep-rules.yaml")
    classifier = OnnxClassifier(model, device="cpu", threads=1)
    scenes = sc.build_scene_set(
        list(data), seed, per_cell, snrs=snrs, folds=folds, clap_folds=clap_folds
    )
    # What a variant leaves unset is the model's own clap_check where it carries one, as in
    # a live run (the daemon's defaults otherwise); resolved once for this model.
    check = classifier.metadata.clap_check
    resolved = [replace(v, settings=v.settings.with_defaults(check)) for v in variants]
    scored: dict[str, list[dict]] = {v.name: [] for v in variants}
    heard_total = 0
    for scene in scenes:
        heard = replay(scene, rules, classifier)
        heard_total += len(heard)
        for v in resolved:
            scored[v.name].append(score_scene(scene, verdicts(v, heard), seed).__dict__)
    return {"patterns_heard": heard_total, "model_clap_check": dict(check), "scenes": scored}


def sweep(
    data: Sequence[Path],
    plans: dict[str, tuple[Path, list[int] | None, list[int] | None]],
    seeds: Sequence[int],
    variants: Sequence[Variant],
    *,
    per_cell: int,
    snrs: Sequence[float],
    max_count: int = MAX_COUNT,
    progress: bool = True,
    jobs: int = 1,
    choose_per_hour: float | None = None,
) -> dict:
    """Replay every plan's scenes once and score each variant on them.

    `plans`: name -> (model, distractor folds, clap folds); a fold each when cross-validated.
    `choose_per_hour`: also choose a variant for each plan on the other plans alone
    (`choose_on_others`), and score each plan with its choice: the figures of choosing the
    setting by cross-validation, not on the scenes it is scored on.
    """
    tasks = {
        f"{name} seed {seed}": dict(
            data=data,
            model=model,
            folds=folds,
            clap_folds=clap_folds,
            seed=seed,
            variants=variants,
            per_cell=per_cell,
            snrs=snrs,
            max_count=max_count,
        )
        for name, (model, folds, clap_folds) in plans.items()
        for seed in seeds
    }
    done = run_all(tasks, jobs, progress, fn=replay_task)
    out: dict = {
        "config": {
            "data": [str(d) for d in data],
            "plans": {
                k: {
                    "model": str(m),
                    "folds": f,
                    "clap_folds": c,
                    # What "current" means for this model: the daemon's defaults with these.
                    "model_clap_check": done[f"{k} seed {seeds[0]}"]["model_clap_check"],
                }
                for k, (m, f, c) in plans.items()
            },
            "seeds": list(seeds),
            "per_cell": per_cell,
            "snrs": list(snrs),
            "max_count": max_count,
            "patterns_heard": sum(r["patterns_heard"] for r in done.values()),
        },
        "variants": {},
    }
    scored: dict[str, dict[str, list[SceneResult]]] = {}
    for v in variants:
        by_plan = scored[v.name] = {
            name: [
                SceneResult(**r)
                for seed in seeds
                for r in done[f"{name} seed {seed}"]["scenes"][v.name]
            ]
            for name in plans
        }
        out["variants"][v.name] = {
            "settings": v.settings.model_dump(),
            "summary": summarise([r for rs in by_plan.values() for r in rs], max_count),
            "per_plan": {k: summarise(rs, max_count) for k, rs in by_plan.items()},
        }
    if choose_per_hour is not None and len(plans) > 1:
        out["chosen"] = choose_on_others(scored, choose_per_hour, max_count)
    return out


def choose_on_others(
    scored: dict[str, dict[str, list[SceneResult]]], per_hour: float, max_count: int
) -> dict:
    """For each plan, the variant that the other plans' scenes alone prefer; each plan
    scored with its own choice, pooled.

    Preferred: at most `per_hour` false triggers an hour on the other plans, then the most
    exact 2- and 3-clap commands at 10 dB and above, then at the lower SNRs. When no variant
    keeps within the limit, the one with the fewest false triggers.
    """
    plans = list(next(iter(scored.values())))
    chosen: dict[str, str] = {}
    for plan in plans:
        best: tuple | None = None
        for name, by_plan in scored.items():
            s = summarise([r for k, rs in by_plan.items() if k != plan for r in rs], max_count)
            ft = s["false_triggers"]
            cells = [c for c in s["cells"].values() if c["count"] in (2, 3)]
            loud = sum(c["tp"] for c in cells if c["snr_db"] >= 10)
            soft = sum(c["tp"] for c in cells if c["snr_db"] < 10)
            within = ft["per_hour"] <= per_hour
            key = (within, loud, soft, -ft["total"]) if within else (within, -ft["total"])
            if best is None or key > best[0]:
                best = (key, name)
        assert best is not None
        chosen[plan] = best[1]
    pooled = [r for plan, name in chosen.items() for r in scored[name][plan]]
    return {"max_per_hour": per_hour, "per_plan": chosen, "summary": summarise(pooled, max_count)}


def _row(name: str, s: dict, counts: Sequence[int]) -> str:
    ft = s["false_triggers"]
    cells = [
        " / ".join(_f(s["cells"].get(f"{n}@{snr}", {}).get("f1")) for n in counts)
        for snr in s["per_snr"]
    ]
    return (
        f"| {name} | {ft['total']} ({ft['per_hour']:.2f}) | "
        + " | ".join(cells)
        + " | "
        + " / ".join(_f(v["f1"]) for v in s["per_snr"].values())
        + " |"
    )


def sweep_table(res: dict) -> str:
    """A row per variant (pooled), then the same per plan (fold) when there are several."""
    first = next(iter(res["variants"].values()))["summary"]
    snrs = list(first["per_snr"])
    counts = [n for n in (2, 3) if n <= res["config"]["max_count"]]
    label = " / ".join(map(str, counts))
    head = [
        "| clap check | false triggers (per hour) | "
        + " | ".join(f"{label}-clap F1, {snr} dB" for snr in snrs)
        + " | all counts F1, "
        + " / ".join(snrs)
        + " dB |",
        "|---|---:|" + "---|" * len(snrs) + "---|",
    ]
    hours = first["false_triggers"]["hours"]
    lines = [
        f"Clap check sweep: {res['config']['patterns_heard']} detector patterns, "
        f"{hours:.1f} h of audio with no command, seeds "
        f"{','.join(map(str, res['config']['seeds']))}; plans "
        + ", ".join(
            f"{k} ({p['model']}, folds {p['folds'] or 'all'})"
            for k, p in res["config"]["plans"].items()
        )
        + ".",
        "",
        *head,
    ]
    lines += [_row(name, v["summary"], counts) for name, v in res["variants"].items()]
    chosen = res.get("chosen")
    if chosen:
        lines.append(_row("chosen on the other folds", chosen["summary"], counts))
        lines += [
            "",
            f"Chosen on the other folds (false triggers at most {chosen['max_per_hour']:g} an "
            "hour there, then the most exact 2- and 3-clap commands at 10 dB and above): "
            + ", ".join(f"{k}: {v}" for k, v in chosen["per_plan"].items())
            + ".",
        ]
    plans = list(res["config"]["plans"])
    if len(plans) > 1:
        for plan in plans:
            lines += ["", f"{plan}:", "", *head]
            lines += [
                _row(name, v["per_plan"][plan], counts) for name, v in res["variants"].items()
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", required=True)
    ap.add_argument("--seeds", type=_ints, default=[0])
    ap.add_argument("--per-cell", type=int, default=12)
    ap.add_argument("--snrs", type=_floats, default=[20.0, 10.0, 5.0, 0.0])
    ap.add_argument("--folds", type=_ints, default=None)
    ap.add_argument("--clap-folds", type=_ints, default=None)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", type=Path, help="ONNX model whose clap check is swept")
    g.add_argument("--cv-model", action="append", metavar="FOLD=FILE", help="as bench/claps.py")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help='clap check settings to try, e.g. "min_clap_score=0.5" (repeatable); '
        "the first row is always the current check: the daemon's defaults, with the "
        "model's own clap_check (its metadata) where it carries one",
    )
    ap.add_argument("--max-count", type=int, choices=(2, 3, 4), default=MAX_COUNT)
    ap.add_argument(
        "--choose-per-hour",
        type=float,
        metavar="RATE",
        help="with --cv-model: also choose a variant for each fold on the other folds alone "
        "(at most RATE false triggers an hour there, then the most commands) and score "
        "each fold with its choice",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "verifier")
    ap.add_argument("--jobs", type=int, default=1, help="replay in this many processes")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: must be at least 1")
    if args.choose_per_hour is not None and not args.cv_model:
        ap.error("--choose-per-hour needs --cv-model: it chooses on the other folds")
    try:
        variants = [Variant("current", ClapSettings())] + [parse_variant(t) for t in args.variant]
    except ValueError as exc:
        ap.error(str(exc))
    if len({v.name for v in variants}) != len(variants):
        ap.error("--variant: a variant given twice")
    if args.cv_model:
        plans = {f"fold {k}": plan for k, plan in cv_plans(ap, args).items()}
    else:
        if not args.model.is_file():
            ap.error(f"--model {args.model}: file not found")
        plans = {"model": (args.model, args.folds, args.clap_folds)}
    res = sweep(
        args.data,
        plans,
        args.seeds,
        variants,
        per_cell=args.per_cell,
        snrs=args.snrs,
        max_count=args.max_count,
        progress=not args.quiet,
        jobs=args.jobs,
        choose_per_hour=args.choose_per_hour,
    )
    table = sweep_table(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(res, indent=1))
    (args.out / "sweep.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
