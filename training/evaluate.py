"""Score a trained model on labelled recordings: a checkpoint or the exported ONNX file,
on a cache or on any dataset folder.

Evaluating the ONNX file through onnxruntime with the front end from its own metadata is
the check that matters for deployment: it is exactly what the daemon will run.
Labels are matched by name, so a 200-label FSD50K model can be scored on ESC-50 clips for
the labels the two share.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.model.metadata import ModelMetadata
from training.datasets.base import Manifest
from training.metrics import (
    binary_ap,
    mean_average_precision,
    per_class_ap,
    precision_recall_f1,
    sigmoid,
    top1_accuracy,
)

log = logging.getLogger(__name__)

CLAP_LABELS = ("clapping", "Clapping")
#: Outputs that are no sound class of any dataset: left out of top-1 unless the data uses
#: them (the clap check's own label, trained on synthetic clap patterns).
AUXILIARY_LABELS = ("clap_pattern",)


class EvaluationError(ValueError):
    """Model and data cannot be evaluated together (no shared labels, other front end...)."""


# --------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    labels: tuple[str, ...]
    frontend: FrontEndConfig
    model_name: str
    #: Normalised mels (B, 1, n_mels, n_frames) float32 -> logits (B, n_labels).
    predict: Callable[[np.ndarray], np.ndarray]
    kind: str  # "checkpoint" or "onnx"
    training_data: dict = field(default_factory=dict)


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """A .pt checkpoint from `fit` or an .onnx file from `export`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    from training.device import pick_device
    from training.fit import build_model_from_checkpoint, checkpoint_frontend, load_checkpoint

    ckpt = load_checkpoint(path)
    dev = pick_device(device)
    model = build_model_from_checkpoint(ckpt).to(dev)

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return (
            model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)).cpu().numpy()
        )

    return LoadedModel(
        tuple(ckpt["labels"]),
        checkpoint_frontend(ckpt),
        ckpt["model_name"],
        predict,
        "checkpoint",
        dict(ckpt.get("training_data", {})),
    )


def _load_onnx(path: Path) -> LoadedModel:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: not a loadable ONNX model ({exc})") from exc
    meta = ModelMetadata.from_onnx_props(sess.get_modelmeta().custom_metadata_map, str(path))
    in_name = sess.get_inputs()[0].name
    if meta.output != "logits":
        raise EvaluationError(f"{path}: model outputs {meta.output}, evaluation expects logits")

    def predict(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {in_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return LoadedModel(
        meta.labels, meta.frontend, meta.model_name, predict, "onnx", dict(meta.training_data)
    )


# --------------------------------------------------------------------------- data


@dataclass
class EvalData:
    name: str
    labels: tuple[str, ...]
    targets: np.ndarray  # (N, C) in `labels` order
    multi_label: bool
    #: Yields normalised mel batches in row order, for a model's front end.
    batches: Callable[[FrontEndConfig, int], Iterator[np.ndarray]]
    source_rates: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Single-label recordings left out up front because the model lacks their label.
    n_outside: int = 0


def _same_frontend(a: FrontEndConfig, b: FrontEndConfig) -> list[str]:
    da, db = asdict(a), asdict(b)
    return [k for k in da if k not in ("mean", "std", "extra") and da[k] != db[k]]


def open_data(
    data: str | Path,
    folds: tuple[str, ...] | None = None,
    layout: str = "auto",
    workers: int = 0,
    progress: bool = False,
    model_labels: tuple[str, ...] | None = None,
    split: str | None = None,
) -> EvalData:
    """A cache folder (has index.json) or a dataset folder in any supported layout.

    With `model_labels`, single-label recordings of other labels are not decoded at all.
    `split`: FSD50K's "dev" or "eval" (see `load_eval_manifest`)."""
    data = Path(data)
    if (data / "index.json").is_file():
        if split is not None:
            raise EvaluationError(
                f"{data}: a cache holds the split it was built from; --split is for dataset "
                "folders (use --folds)"
            )
        return _cache_data(data, folds)
    return _dataset_data(data, folds, layout, workers, progress, model_labels, split)


def _cache_data(path: Path, folds: tuple[str, ...] | None) -> EvalData:
    from training.cache import Cache

    cache = Cache.open(path)
    rows = np.arange(len(cache)) if not folds else cache.indices_for_folds(folds)
    if folds and rows.size == 0:
        raise EvaluationError(
            f"{path}: no clips in folds {list(folds)} (cache has {list(cache.folds)})"
        )

    def batches(fe: FrontEndConfig, bs: int) -> Iterator[np.ndarray]:
        diff = _same_frontend(fe, cache.frontend)
        if diff:
            raise EvaluationError(f"{path}: cache was built with another front end ({diff})")
        for start in range(0, rows.size, bs):
            db = np.asarray(cache.mels[rows[start : start + bs]], dtype=np.float32)
            yield ((db - fe.mean) / fe.std)[:, None]

    return EvalData(
        cache.dataset,
        tuple(cache.labels),
        np.asarray(cache.targets[rows], dtype=np.float64),
        cache.multi_label,
        batches,
        np.asarray(cache.source_rates)[rows],
        [(str(p), r) for p, r in cache.skipped],
    )


def _as_list(batch: list) -> list:
    return batch


class _Clips(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], fe: FrontEndConfig) -> None:
        self.paths, self.fe = paths, fe

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int, str]:
        from training.audio import AudioLoadError, fit_length, load_audio, resample

        try:
            audio, rate = load_audio(self.paths[i])
            clip = fit_length(resample(audio, rate, self.fe.sample_rate), self.fe.clip_samples)
        except AudioLoadError as exc:
            return i, None, 0, exc.reason
        return i, clip, rate, ""


def load_eval_manifest(
    root: Path, folds: tuple[str, ...] | None, layout: str = "auto", split: str | None = None
) -> Manifest:
    """The dataset at `root` for scoring. FSD50K keeps its eval split (fold "eval", the
    standard test set) in a table of its own, apart from dev ("train"/"val"): with no
    `split` given, the folds asked for choose, so `--folds eval` scores the eval split and
    `--folds val,eval` both. A given `split` is loaded as `precache --split` would."""
    from training.datasets import detect_layout, load_dataset

    if layout == "auto":
        layout = detect_layout(root)
    if split is not None or layout != "fsd50k":
        return load_dataset(root, layout=layout, split=split or "dev")
    wanted = set(folds or ())
    splits = ["dev"] if not wanted or wanted - {"eval"} else []
    if "eval" in wanted:
        splits.append("eval")
    parts = [load_dataset(root, layout=layout, split=s) for s in splits]
    items = tuple(item for part in parts for item in part.items)
    return Manifest(items, parts[0].labels, parts[0].name, parts[0].multi_label)


def _dataset_data(
    root: Path,
    folds: tuple[str, ...] | None,
    layout: str,
    workers: int,
    progress: bool,
    model_labels: tuple[str, ...] | None = None,
    split: str | None = None,
) -> EvalData:
    from tqdm.auto import tqdm

    from training.frontend import LogMel

    manifest = load_eval_manifest(root, folds, layout, split)
    if folds:
        manifest = manifest.subset(folds)
        if not manifest.items:
            raise EvaluationError(
                f"{root}: no recordings in folds {list(folds)}"
                + (f" of the {split} split" if split is not None else "")
            )
    n_outside = 0
    if model_labels is not None and not manifest.multi_label:
        known = set(model_labels)
        keep = tuple(i for i in manifest.items if known.intersection(i.labels))
        n_outside = len(manifest.items) - len(keep)
        manifest = type(manifest)(keep, manifest.labels, manifest.name, manifest.multi_label)
    index_of = {lab: c for c, lab in enumerate(manifest.labels)}
    paths = [item.path for item in manifest.items]
    # Decoding happens once the model's front end is known; rows that fail to decode are
    # dropped from the targets too, and listed in `skipped`.
    state: dict[str, Any] = {}
    targets = np.zeros((len(paths), len(manifest.labels)))
    for r, item in enumerate(manifest.items):
        targets[r, [index_of[lab] for lab in item.labels]] = 1.0
    data = EvalData(
        manifest.name,
        manifest.labels,
        targets,
        manifest.multi_label,
        lambda f, b: iter(()),
        n_outside=n_outside,
    )

    def decode(fe: FrontEndConfig) -> None:
        if not paths:
            raise EvaluationError(f"{root}: no recordings carry a label the model knows")
        loader = torch.utils.data.DataLoader(
            _Clips(paths, fe), batch_size=16, num_workers=workers, collate_fn=_as_list
        )
        logmel = LogMel(fe, normalise=True)
        mels, ok, rates = [], [], []
        with torch.inference_mode():
            for batch in tqdm(loader, desc="decode", disable=not progress, leave=False):
                good = [(i, c, r) for i, c, r, _ in batch if c is not None]
                for i, c, _, reason in batch:
                    if c is None:
                        log.warning("skipping %s: %s", paths[i], reason)
                        data.skipped.append((str(paths[i]), reason))
                if good:
                    wave = torch.from_numpy(np.stack([c for _, c, _ in good]))
                    mels.append(logmel(wave).numpy())
                    ok.extend(i for i, _, _ in good)
                    rates.extend(r for _, _, r in good)
        if not ok:
            raise EvaluationError(f"{root}: none of the {len(paths)} recordings could be decoded")
        state["mels"] = np.concatenate(mels)
        data.targets = targets[np.asarray(ok)]
        data.source_rates = np.asarray(rates)

    def batches(fe: FrontEndConfig, bs: int) -> Iterator[np.ndarray]:
        if "mels" not in state:
            decode(fe)
        mels = state["mels"]
        for start in range(0, len(mels), bs):
            yield mels[start : start + bs]

    data.batches = batches
    return data


# --------------------------------------------------------------------------- metrics


def _clean(x: Any) -> Any:
    """NaN (undefined, e.g. AP of a label with no positives) becomes JSON null."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def compute_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    labels: tuple[str, ...],
    multi_label: bool,
    source_rates: np.ndarray | None = None,
    threshold: float = 0.5,
    rivals: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every figure of an evaluation from aligned (N, C) logits and targets; `rivals`:
    the (N, K) logits of the model's other outputs, which compete for top-1."""
    probs = sigmoid(logits)
    ap = per_class_ap(targets, probs)
    prf = precision_recall_f1(targets, probs, threshold)
    out: dict[str, Any] = {
        "n_clips": int(targets.shape[0]),
        "n_labels": len(labels),
        "threshold": threshold,
        "map": mean_average_precision(targets, probs),
        "precision": prf.micro_precision,
        "recall": prf.micro_recall,
        "f1": prf.micro_f1,
        "macro_precision": prf.macro_precision,
        "macro_recall": prf.macro_recall,
        "macro_f1": prf.macro_f1,
        "per_class": {
            lab: {
                "ap": ap[c],
                "precision": prf.precision[c],
                "recall": prf.recall[c],
                "f1": prf.f1[c],
                "support": int(prf.support[c]),
            }
            for c, lab in enumerate(labels)
        },
    }
    if not multi_label:
        out["accuracy"] = top1_accuracy(targets, logits, rivals)
        if rivals is not None and rivals.size:
            outside = np.max(rivals, axis=1) > np.max(logits, axis=1)
            out["top1_outside_data_labels"] = int(outside.sum())
    clap = next((lab for lab in CLAP_LABELS if lab in labels), None)
    if clap is not None:
        c = labels.index(clap)
        out["clap_label"] = clap
        out["clap_vs_rest_ap"] = binary_ap(targets[:, c] > 0.5, probs[:, c])
    if source_rates is not None and len(source_rates) == len(targets):
        by_rate: dict[str, dict[str, Any]] = {}
        for rate in sorted(set(int(r) for r in source_rates)):
            sel = np.asarray(source_rates) == rate
            entry: dict[str, Any] = {"n_clips": int(sel.sum())}
            if multi_label:
                entry["map"] = mean_average_precision(targets[sel], probs[sel])
            else:
                entry["accuracy"] = top1_accuracy(
                    targets[sel], logits[sel], rivals[sel] if rivals is not None else None
                )
            by_rate[str(rate)] = entry
        out["by_source_rate"] = by_rate
    return out


# --------------------------------------------------------------------------- entry point


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    metrics_path: Path | None = None
    report_path: Path | None = None
    chart_path: Path | None = None


def run_model(model: LoadedModel, data: EvalData, batch_size: int = 32) -> np.ndarray:
    outs = [model.predict(x) for x in data.batches(model.frontend, batch_size)]
    return np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, len(model.labels)))


def evaluate(
    model_path: str | Path,
    data: str | Path,
    folds: tuple[str, ...] | None = None,
    out_dir: str | Path | None = None,
    layout: str = "auto",
    batch_size: int = 32,
    threshold: float = 0.5,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = False,
    split: str | None = None,
) -> EvalResult:
    """Score `model_path` on `data`; write metrics.json, report.md, per_class_ap.png to
    `out_dir` when given. `split`: FSD50K's dev or eval split (default: as `folds` ask)."""
    model = load_model(model_path, device=device)
    ev = open_data(
        data,
        folds,
        layout,
        workers=workers,
        progress=progress,
        model_labels=model.labels,
        split=split,
    )
    shared = [lab for lab in model.labels if lab in set(ev.labels)]
    if not shared:
        raise EvaluationError(
            f"model {model_path} and data {data} share no label names "
            f"(model: {', '.join(model.labels[:5])}...; data: {', '.join(ev.labels[:5])}...)"
        )
    logits_all = run_model(model, ev, batch_size)
    m_cols = [model.labels.index(lab) for lab in shared]
    d_cols = [ev.labels.index(lab) for lab in shared]
    logits = logits_all[:, m_cols]
    # The model's other outputs still compete for top-1, except an auxiliary one the data
    # does not use (clap_pattern answers the clap check, it is no sound of any dataset):
    # ESC-50 scores among its 50 classes, as the literature does.
    not_rivals = {*shared, *AUXILIARY_LABELS}
    r_cols = [i for i, lab in enumerate(model.labels) if lab not in not_rivals]
    rivals = logits_all[:, r_cols]
    targets = ev.targets[:, d_cols]
    rates = ev.source_rates
    n_outside = ev.n_outside
    if not ev.multi_label:
        # A single-label clip whose label the model does not know cannot be scored.
        keep = targets.sum(1) > 0
        n_outside += int((~keep).sum())
        logits, targets, rivals = logits[keep], targets[keep], rivals[keep]
        rates = rates[keep] if rates is not None else None
    metrics = compute_metrics(
        logits, targets, tuple(shared), ev.multi_label, rates, threshold, rivals=rivals
    )
    metrics.update(
        {
            "model": str(model_path),
            "model_kind": model.kind,
            "model_name": model.model_name,
            "data": str(data),
            "dataset": ev.name,
            "folds": list(folds) if folds else None,
            "labels_not_in_model": [lab for lab in ev.labels if lab not in set(model.labels)],
            "clips_with_unknown_label": n_outside,
            "skipped": [{"path": p, "reason": r} for p, r in ev.skipped],
        }
    )
    metrics = _clean(metrics)
    result = EvalResult(metrics)
    if out_dir is not None:
        from training.report import write_report

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.metrics_path = out / "metrics.json"
        result.metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        result.report_path, result.chart_path = write_report(metrics, out)
    return result
