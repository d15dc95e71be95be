"""Checkpoint -> self-describing ONNX file for the daemon.

The file carries its labels and front end (with the training statistics) in metadata, so
the daemon needs nothing else. Export is only accepted after onnxruntime reproduces the
torch logits on random and, when given, real inputs: a silent numerical mismatch would
otherwise surface as a model that "just works worse" on the Pi.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.model.metadata import ModelMetadata
from training.fit import build_model_from_checkpoint, checkpoint_frontend, load_checkpoint

log = logging.getLogger(__name__)

INPUT_NAME = "mel"
OUTPUT_NAME = "logits"
MIN_OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported graph is invalid or does not reproduce the torch model."""


@dataclass
class ExportReport:
    path: Path
    opset: int
    exporter: str
    parity_max_abs: float
    n_parity_inputs: int
    size_bytes: int
    labels: tuple[str, ...]
    int8_path: Path | None = None
    int8_size_bytes: int | None = None
    #: Largest logit difference between the INT8 and float models on the parity inputs.
    int8_max_abs: float | None = None
    #: Metric used for the INT8 comparison ("accuracy" single-label, else "map").
    int8_metric: str | None = None
    #: INT8 minus float on the given eval set (negative = INT8 is worse).
    int8_accuracy_delta: float | None = None


def _torch_export(model: torch.nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> str:
    """TorchScript exporter first (simple, robust for these models); dynamo as fallback."""
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
    )
    try:
        with warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (see above); its notice is noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                **kwargs,
            )
        return "torchscript"
    except Exception as exc:  # fall back to the other exporter, whatever the failure
        log.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", exc)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=True,
        external_data=False,
        dynamic_shapes=({0: batch},),
        **kwargs,
    )
    return "dynamo"


def _write_metadata(path: Path, meta: ModelMetadata, opset_floor: int) -> int:
    import onnx

    m = onnx.load(str(path))
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < opset_floor:
        raise ExportError(f"{path}: exported with opset {opset}, need >= {opset_floor}")
    keep = [p for p in m.metadata_props if not p.key.startswith("claudio.")]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for key, value in meta.to_onnx_props().items():
        m.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: exported graph is invalid: {exc}") from exc
    onnx.save(m, str(path))
    return opset


def read_metadata(path: str | Path) -> ModelMetadata:
    """The Claudio metadata of an exported ONNX file (as the daemon reads it)."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_onnx_props({p.key: p.value for p in m.metadata_props}, str(path))


def set_clap_check(
    path: str | Path, values: Mapping[str, float], *, clear: bool = False
) -> ModelMetadata:
    """Write the clap check's operating point into an exported model, keeping its other
    metadata; `values` are added to what it carries (all of it replaced with `clear`).

    Why a command of its own: the operating point is measured on the exported (INT8) file
    with bench/verifier_sweep.py, after the export.
    """
    path = Path(path)
    meta = read_metadata(path)
    check = {} if clear else dict(meta.clap_check)
    meta = replace(meta, clap_check={**check, **values})  # validated by ModelMetadata
    _write_metadata(path, meta, MIN_OPSET)
    return meta


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_logits(sess, x: np.ndarray, batch: int = 16) -> np.ndarray:
    outs = [
        sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x[i : i + batch], np.float32)})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(outs)


#: Clips the INT8 activation ranges are calibrated on. Eight (the parity inputs) missed
#: the loud and the quiet ends: ESC-50 fold 1 lost 2.0 points of accuracy to INT8.
CALIBRATION_CLIPS = 128


def parity_inputs_from(
    data: str | Path,
    n: int = 8,
    *,
    training_folds_only: bool = False,
    frontend: FrontEndConfig | None = None,
) -> np.ndarray:
    """Up to `n` real normalised inputs from a cache folder, spread evenly over it.

    `training_folds_only`: only rows of the folds its stats.json was computed on (the
    training folds), so calibrating a cross-validation model never looks at its test fold.
    `frontend`: normalise with its statistics (the model's) instead of the cache's.
    """
    from training.cache import Cache
    from training.stats import stats_folds

    data = Path(data)
    cache = Cache.open(data)
    pool = np.arange(len(cache))
    folds = stats_folds(data) if training_folds_only else None
    if folds:
        pool = cache.indices_for_folds(folds)
    if pool.size == 0:
        raise ValueError(f"{data}: no clips in the folds {folds} its stats.json names")
    rows = pool[np.linspace(0, pool.size - 1, num=min(n, pool.size)).round().astype(int)]
    fe = frontend or cache.frontend
    return ((np.asarray(cache.mels[np.unique(rows)], np.float32) - fe.mean) / fe.std)[:, None]


def export_module(
    model: torch.nn.Module, out_path: str | Path, meta: ModelMetadata, opset: int = 17
) -> str:
    """Export an untrained or in-memory model with Claudio metadata, without a parity check
    (benchmarks of an architecture's cost, where the weights do not matter)."""
    shape = (1, meta.frontend.n_mels, meta.frontend.n_frames)
    out = Path(out_path)
    with torch.no_grad():
        exporter = _torch_export(model.cpu().eval(), torch.zeros((2, *shape)), out, opset)
    _write_metadata(out, meta, MIN_OPSET)
    return exporter


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    opset: int = 17,
    quantize_int8: bool = False,
    parity_inputs: np.ndarray | str | Path | None = None,
    int8_eval_data: str | Path | None = None,
    int8_eval_folds: tuple[str, ...] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    clap_check: Mapping[str, float] | None = None,
) -> ExportReport:
    """Export a `fit` checkpoint to ONNX (input "mel" (B,1,n_mels,n_frames), output
    "logits"), write Claudio metadata, and verify parity with onnxruntime.

    `parity_inputs`: real normalised inputs (array) or a cache folder to draw them from.
    With `quantize_int8`, also writes `<out>.int8.onnx` (static QDQ quantisation calibrated
    on `CALIBRATION_CLIPS` clips of the training folds when `parity_inputs` is a cache
    folder, else on the parity inputs) and, given `int8_eval_data`, its metric change on
    that data. `clap_check`: the daemon's clap-check settings measured for this recipe's
    models (`ModelMetadata.clap_check`), written into both files.

    Both files are written in a temporary folder beside `out_path` and renamed into place
    only after every check passed: a failed export leaves what was there (perhaps the
    shipped model) untouched, and never an unchecked model the daemon would load.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    ckpt = load_checkpoint(checkpoint)
    model = build_model_from_checkpoint(ckpt).cpu().eval()
    fe = checkpoint_frontend(ckpt)
    if fe.mean == 0.0 and fe.std == 1.0:
        log.warning("%s: front end has no training statistics (mean 0, std 1)", checkpoint)
    meta = ModelMetadata(
        labels=tuple(ckpt["labels"]),
        frontend=fe,
        model_name=str(ckpt["model_name"]),
        training_data=dict(ckpt.get("training_data", {})),
        clap_check=dict(clap_check or {}),
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = _export_checked(
            model,
            meta,
            staging / out.name,
            out,
            opset,
            quantize_int8,
            parity_inputs,
            int8_eval_data,
            int8_eval_folds,
            tolerance,
        )
        # Same folder, so each rename is atomic; the INT8 file last, as it is optional.
        os.replace(report.path, out)
        report.path = out
        if report.int8_path is not None:
            int8 = out.with_suffix(".int8.onnx")
            os.replace(report.int8_path, int8)
            report.int8_path = int8
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _export_checked(
    model: torch.nn.Module,
    meta: ModelMetadata,
    out: Path,
    final: Path,
    opset: int,
    quantize_int8: bool,
    parity_inputs: np.ndarray | str | Path | None,
    int8_eval_data: str | Path | None,
    int8_eval_folds: tuple[str, ...] | None,
    tolerance: float,
) -> ExportReport:
    """`export_onnx`'s work on the staging file `out` (messages name `final`)."""
    fe = meta.frontend
    gen = torch.Generator().manual_seed(0)
    shape = (1, fe.n_mels, fe.n_frames)
    dummy = torch.randn((2, *shape), generator=gen)
    with torch.no_grad():
        exporter = _torch_export(model, dummy, out, opset)
    actual_opset = _write_metadata(out, meta, MIN_OPSET)

    checks = [
        torch.randn((3, *shape), generator=gen).numpy(),
        torch.randn((1, *shape), generator=gen).numpy(),
    ]
    if parity_inputs is not None:
        real = (
            parity_inputs
            if isinstance(parity_inputs, np.ndarray)
            else parity_inputs_from(parity_inputs)
        )
        real = np.asarray(real, np.float32)
        if real.shape[1:] != shape:
            raise ValueError(f"parity inputs have shape {real.shape[1:]}, model expects {shape}")
        checks.append(real)
    sess = _session(out)
    worst = 0.0
    for x in checks:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = _ort_logits(sess, x)
        worst = max(worst, float(np.max(np.abs(ref - got))))
    if not worst <= tolerance:
        raise ExportError(
            f"{final}: onnxruntime logits differ from torch by {worst:.2e} (> {tolerance:.0e}); "
            "nothing written"
        )
    report = ExportReport(
        path=out,
        opset=actual_opset,
        exporter=exporter,
        parity_max_abs=worst,
        n_parity_inputs=int(sum(len(x) for x in checks)),
        size_bytes=out.stat().st_size,
        labels=meta.labels,
    )
    log.info(
        "exported %s (%s, opset %d), parity max |diff| %.2e", final, exporter, actual_opset, worst
    )

    if quantize_int8:
        if parity_inputs is None or isinstance(parity_inputs, np.ndarray):
            calib = np.concatenate(checks[2:] or checks)
        else:
            calib = parity_inputs_from(
                parity_inputs, CALIBRATION_CLIPS, training_folds_only=True, frontend=fe
            )
        log.info("calibrating INT8 activations on %d clips", len(calib))
        int8 = out.with_suffix(".int8.onnx")
        _quantize_static(out, int8, calib)
        _write_metadata(int8, meta, MIN_OPSET)
        q = _session(int8)
        report.int8_path = int8
        report.int8_size_bytes = int8.stat().st_size
        report.int8_max_abs = float(
            max(np.max(np.abs(_ort_logits(q, x) - _ort_logits(sess, x))) for x in checks)
        )
        if int8_eval_data is not None:
            from training.evaluate import evaluate

            base = evaluate(out, int8_eval_data, folds=int8_eval_folds).metrics
            quant = evaluate(int8, int8_eval_data, folds=int8_eval_folds).metrics
            key = "accuracy" if "accuracy" in base else "map"
            report.int8_metric = key
            if base.get(key) is not None and quant.get(key) is not None:
                report.int8_accuracy_delta = float(quant[key] - base[key])
        change = (
            f", {report.int8_metric} change {report.int8_accuracy_delta:+.4f}"
            if report.int8_accuracy_delta is not None
            else ""
        )
        log.info(
            "INT8 model %s: %d bytes, max |diff| %.3f%s",
            final.with_suffix(".int8.onnx"),
            report.int8_size_bytes,
            report.int8_max_abs,
            change,
        )
    return report


class _Calibration(CalibrationDataReader):
    """Feeds calibration inputs, one clip at a time, to onnxruntime's static quantiser."""

    def __init__(self, x: np.ndarray) -> None:
        self._it = iter([{INPUT_NAME: x[i : i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _quantize_static(src: Path, dst: Path, calib: np.ndarray) -> None:
    """Static QDQ INT8 (per-channel weights): convolutions quantise well this way and it runs
    with plain onnxruntime on x86 and ARM, unlike dynamic ConvInteger."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _Calibration(calib.astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception as exc:  # pre-processing is an optimisation, not a requirement
            log.warning("quantisation pre-processing failed (%s); quantising as exported", exc)
            source = src
        quantize_static(
            str(source),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
