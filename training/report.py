"""Human-readable evaluation output: a short Markdown summary and a per-class AP chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def ranked_labels(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, AP) for labels with a defined AP, best first."""
    per = metrics.get("per_class", {})
    rows = [(lab, v["ap"]) for lab, v in per.items() if v.get("ap") is not None]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def markdown_report(metrics: dict[str, Any], n_show: int = 5) -> str:
    lines = [
        f"# Evaluation of {metrics.get('model_name', 'model')} on {metrics.get('dataset', 'data')}",
        "",
        f"- model: `{metrics.get('model')}` ({metrics.get('model_kind')})",
        f"- data: `{metrics.get('data')}`"
        + (f", folds {', '.join(metrics['folds'])}" if metrics.get("folds") else ""),
        f"- clips: {metrics.get('n_clips')}, labels scored: {metrics.get('n_labels')}",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| mAP | {_fmt(metrics.get('map'))} |",
    ]
    if "accuracy" in metrics:
        lines.append(f"| top-1 accuracy | {_fmt(metrics['accuracy'])} |")
    thr = metrics.get("threshold", 0.5)
    for key, name in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
        lines.append(
            f"| {name} @ {thr} (micro / macro) | {_fmt(metrics.get(key))} / "
            f"{_fmt(metrics.get('macro_' + key))} |"
        )
    if "clap_vs_rest_ap" in metrics:
        lines.append(
            f"| {metrics.get('clap_label')} vs rest AP | {_fmt(metrics['clap_vs_rest_ap'])} |"
        )
    for rate, entry in (metrics.get("by_source_rate") or {}).items():
        key = "accuracy" if "accuracy" in entry else "map"
        lines.append(
            f"| {key} on {rate} Hz sources ({entry['n_clips']} clips) | {_fmt(entry.get(key))} |"
        )
    ranked = ranked_labels(metrics)
    if ranked:
        n = min(n_show, max(1, len(ranked) // 2))
        lines += ["", "## Best labels (AP)", ""]
        lines += [f"- {lab}: {ap:.3f}" for lab, ap in ranked[:n]]
        lines += ["", "## Worst labels (AP)", ""]
        lines += [f"- {lab}: {ap:.3f}" for lab, ap in ranked[::-1][:n]]
    if metrics.get("skipped"):
        lines += ["", f"{len(metrics['skipped'])} recordings could not be read (see metrics.json)."]
    return "\n".join(lines) + "\n"


def plot_per_class_ap(metrics: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = ranked_labels(metrics)
    height = max(3.0, 0.18 * len(ranked) + 1.0)
    fig, ax = plt.subplots(figsize=(7, height))
    try:
        names = [lab for lab, _ in ranked][::-1]
        values = [ap for _, ap in ranked][::-1]
        ax.barh(range(len(values)), values, color="#4477aa")
        ax.set_yticks(range(len(values)), names, fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel("average precision")
        ax.set_title(f"Per-class AP (mAP {_fmt(metrics.get('map'))})")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def write_report(metrics: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    md = out_dir / "report.md"
    md.write_text(markdown_report(metrics))
    return md, plot_per_class_ap(metrics, out_dir / "per_class_ap.png")
