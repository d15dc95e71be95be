"""The comparison's one table: scores from predictions, then results.md, results.json, results.png.

Scoring is the same function for every approach, so no approach is measured differently:
- mAP: macro average precision over the labels with a positive in the test set;
- precision, recall, F1: MACRO averages (every label counts the same, as ESC-50 reports do).
  Decisions are the top-scoring label for single-label data (each clip has exactly one) and
  score >= 0.5 per label for multi-label data (the daemon's sigmoid threshold);
- accuracy (single-label only): share of clips whose top label is right.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import mean_average_precision, precision_recall_f1, top1_accuracy

__all__ = [
    "COLUMNS",
    "NOT_REPRODUCED",
    "Row",
    "score",
    "write_table",
]

#: The table's columns, in order; results.json rows carry at least these keys.
COLUMNS: tuple[str, ...] = (
    "approach",
    "precision",
    "recall",
    "f1",
    "map",
    "params",
    "train_time_s",
    "infer_ms_per_clip",
)

#: Approaches of the study that this repository cannot rerun, and why.
NOT_REPRODUCED: tuple[dict[str, str], ...] = (
    {
        "approach": "clap",
        "reason": "needs LAION-CLAP's pretrained weights, which cannot be fetched here; "
        "not reproducible with this repository",
    },
)


def score(targets: np.ndarray, probs: np.ndarray, multi_label: bool) -> dict[str, float]:
    """precision, recall, f1 (macro), map, and accuracy for single-label data."""
    targets = np.asarray(targets, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if multi_label:
        prf = precision_recall_f1(targets, probs, 0.5)
        out = {}
    else:
        decided = np.zeros_like(probs)
        decided[np.arange(len(probs)), probs.argmax(1)] = 1.0
        prf = precision_recall_f1(targets, decided, 0.5)
        out = {"accuracy": top1_accuracy(targets, probs)}
    return {
        "precision": prf.macro_precision,
        "recall": prf.macro_recall,
        "f1": prf.macro_f1,
        "map": mean_average_precision(targets, probs),
        **out,
    }


@dataclass
class Row:
    approach: str
    precision: float
    recall: float
    f1: float
    map: float
    params: int
    train_time_s: float
    infer_ms_per_clip: float
    #: Anything else worth keeping (accuracy, epochs, device, importances...).
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _params(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    head = (
        "| approach | precision | recall | F1 | mAP | parameters | training time (s) "
        "| inference (ms/clip) |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r.approach} | {_num(r.precision)} | {_num(r.recall)} | {_num(r.f1)} "
            f"| {_num(r.map)} | {_params(r.params)} | {_num(r.train_time_s, 1)} "
            f"| {_num(r.infer_ms_per_clip, 2)} |"
        )
    for nr in NOT_REPRODUCED:
        lines.append(f"| {nr['approach']} | - | - | - | - | - | - | - |")

    def folds(key: str) -> str:
        return ", ".join(meta.get(key) or []) or "-"

    notes = [
        "",
        f"Data: {meta.get('dataset', '?')}, {meta.get('n_train', '?')} training clips "
        f"(folds {folds('train_folds')}), {meta.get('n_val', 0)} validation "
        f"(folds {folds('val_folds')}), {meta.get('n_test', '?')} scored "
        f"(folds {folds('scored_folds')}); {meta.get('n_labels', '?')} labels.",
        "Precision, recall and F1 are macro averages "
        + (
            "of score >= 0.5 decisions."
            if meta.get("multi_label")
            else "of top-label decisions (one label per clip)."
        ),
        f"Training on {meta.get('device', '?')}; inference is one clip at a time from the "
        "waveform (front end included) on the CPU"
        + (f" with {meta['cpu_threads']} threads" if meta.get("cpu_threads") else "")
        + ". XGBoost parameters are tree nodes.",
    ]
    for nr in NOT_REPRODUCED:
        notes.append(f"{nr['approach']}: {nr['reason']}.")
    if meta.get("command"):
        notes += ["", "Command:", "", f"    {meta['command']}"]
    return "\n".join(lines + notes) + "\n"


def chart(rows: list[Row], path: Path) -> Path:
    """Grouped bars (precision, recall, F1, mAP) per approach, plus training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.approach for r in rows]
    metrics = ("precision", "recall", "f1", "map")
    x = np.arange(len(rows))
    width = 0.2
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(max(8.0, 1.6 * len(rows) + 5.0), 4.5), gridspec_kw={"width_ratios": [3, 2]}
    )
    for k, m in enumerate(metrics):
        vals = [getattr(r, m) if not math.isnan(getattr(r, m)) else 0.0 for r in rows]
        ax.bar(x + (k - 1.5) * width, vals, width, label="mAP" if m == "map" else m)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on the scored folds")
    ax.legend(ncols=4, fontsize=8, loc="upper left")
    ax.set_title("Classification")
    ax2.bar(x, [max(r.train_time_s, 1e-3) for r in rows], color="tab:gray")
    ax2.set_yscale("log")
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.set_ylabel("training time (s, log scale)")
    ax2.set_title("Cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_table(rows: list[Row], out_dir: str | Path, meta: dict[str, Any]) -> dict[str, Path]:
    """Write results.md, results.json and results.png into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "results.md", "json": out / "results.json", "png": out / "results.png"}
    paths["md"].write_text(markdown(rows, meta))
    doc = {
        "columns": list(COLUMNS),
        "rows": [r.to_dict() for r in rows],
        "not_reproduced": list(NOT_REPRODUCED),
        "meta": meta,
    }
    paths["json"].write_text(json.dumps(_clean(doc), indent=2, sort_keys=False))
    chart(rows, paths["png"])
    return paths
