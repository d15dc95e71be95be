"""ONNX export: every model, parity with torch, metadata, INT8, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.model.metadata import ModelMetadata
from training.export import ExportError, export_onnx
from training.models import MODEL_NAMES, create_model

LABELS = ["dog", "clapping", "rain"]


def _checkpoint(tmp_path: Path, name: str, **kw) -> Path:
    torch.manual_seed(0)
    model = create_model(name, len(LABELS), **kw).eval()
    # Non-trivial BatchNorm statistics, so the export must carry them correctly.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    path = tmp_path / f"{name}.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": name,
            "model_kwargs": kw,
            "labels": LABELS,
            "frontend": FrontEndConfig().with_stats(-42.5, 17.25).to_json(),
            "training_data": {"dataset": "unit", "n_clips": 3, "licence": "test"},
        },
        path,
    )
    return path


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_exports_with_parity(tmp_path: Path, name: str) -> None:
    ckpt = _checkpoint(tmp_path, name)
    real = np.random.default_rng(1).standard_normal((2, 1, 128, 256)).astype(np.float32)
    rep = export_onnx(ckpt, tmp_path / f"{name}.onnx", parity_inputs=real)
    assert rep.parity_max_abs < 1e-4
    assert rep.opset >= 17
    sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["mel"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for batch in (1, 4):  # the batch axis is dynamic
        out = sess.run(None, {"mel": np.zeros((batch, 1, 128, 256), np.float32)})[0]
        assert out.shape == (batch, len(LABELS))


def test_metadata_is_readable_by_the_daemon_side(tmp_path: Path) -> None:
    rep = export_onnx(_checkpoint(tmp_path, "simple_cnn"), tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(rep.path)).metadata_props}
    meta = ModelMetadata.from_onnx_props(props)
    assert meta.labels == tuple(LABELS)
    assert meta.model_name == "simple_cnn"
    assert (meta.frontend.mean, meta.frontend.std) == (-42.5, 17.25)
    assert meta.frontend.n_frames == 256
    assert meta.training_data["dataset"] == "unit"
    assert meta.output == "logits"


def test_int8_model_is_written_and_close(tmp_path: Path) -> None:
    calib = np.random.default_rng(2).standard_normal((4, 1, 128, 256)).astype(np.float32)
    rep = export_onnx(
        _checkpoint(tmp_path, "simple_cnn"),
        tmp_path / "m.onnx",
        quantize_int8=True,
        parity_inputs=calib,
    )
    assert rep.int8_path is not None and rep.int8_path.is_file()
    assert rep.int8_size_bytes < rep.size_bytes
    graph_ops = {n.op_type for n in onnx.load(str(rep.int8_path)).graph.node}
    assert "QuantizeLinear" in graph_ops
    props = {p.key: p.value for p in onnx.load(str(rep.int8_path)).metadata_props}
    assert ModelMetadata.from_onnx_props(props).labels == tuple(LABELS)
    assert rep.int8_max_abs is not None and rep.int8_max_abs < 1.0


def test_old_opset_and_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, "simple_cnn")
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(ckpt, tmp_path / "m.onnx", opset=13)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        export_onnx(tmp_path / "nope.pt", tmp_path / "m.onnx")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable training checkpoint"):
        export_onnx(junk, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="parity inputs have shape"):
        export_onnx(ckpt, tmp_path / "m.onnx", parity_inputs=np.zeros((1, 1, 64, 256), np.float32))


def test_parity_failure_raises(tmp_path: Path) -> None:
    # A tolerance no float32 graph can meet must trip the check rather than pass silently.
    with pytest.raises(ExportError, match="differ from torch"):
        export_onnx(_checkpoint(tmp_path, "resnet18"), tmp_path / "m.onnx", tolerance=0.0)


def test_a_failed_export_leaves_out_as_it_was(tmp_path: Path) -> None:
    """--out is written only once every check passed: a failed parity check, or a failure
    after it (the INT8 evaluation), used to leave the unchecked model there, replacing the
    earlier (perhaps shipped) one, with full metadata for the daemon to load."""
    ckpt = _checkpoint(tmp_path, "simple_cnn")
    out = tmp_path / "models" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(b"the shipped model")
    with pytest.raises(ExportError, match=f"{out}: onnxruntime logits differ"):
        export_onnx(ckpt, out, tolerance=-1.0)  # no graph can meet it: a mismatch
    with pytest.raises(ValueError, match="missing: dataset folder not found"):
        export_onnx(ckpt, out, quantize_int8=True, int8_eval_data=tmp_path / "missing")
    assert out.read_bytes() == b"the shipped model"
    assert [p.name for p in out.parent.iterdir()] == ["m.onnx"]  # no temporary files left
    rep = export_onnx(ckpt, out, quantize_int8=True)
    assert (rep.path, rep.int8_path) == (out, out.parent / "m.int8.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.int8.onnx", "m.onnx"]
    for path in (rep.path, rep.int8_path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert sess.get_modelmeta().custom_metadata_map["claudio.labels"]


def test_the_clap_check_travels_with_the_model(tmp_path: Path) -> None:
    """`export --clap-check` writes it into both files, `clap-check` shows and changes it,
    and the daemon reads it back; what it could not use is refused with the option named."""
    from typer.testing import CliRunner

    from claudio_daemon.model.classifier import OnnxClassifier
    from training.cli import app

    ckpt = _checkpoint(tmp_path, "simple_cnn")
    out = tmp_path / "m.onnx"
    cli = CliRunner()
    args = ["export", str(ckpt), "--out", str(out), "--int8"]
    res = cli.invoke(app, [*args, "--clap-check", "min_clap_score=0.6"])
    assert res.exit_code == 0, res.output
    for path in (out, tmp_path / "m.int8.onnx"):
        assert OnnxClassifier(path).metadata.clap_check == {"min_clap_score": 0.6}
    res = cli.invoke(app, ["clap-check", str(out)])
    assert res.exit_code == 0 and 'clap check {"min_clap_score": 0.6}' in res.output
    res = cli.invoke(app, ["clap-check", str(out), "--set", "veto_margin=0.1"])
    assert res.exit_code == 0, res.output
    meta = OnnxClassifier(out).metadata
    assert meta.clap_check == {"min_clap_score": 0.6, "veto_margin": 0.1}
    assert meta.labels == tuple(LABELS) and meta.frontend.mean == -42.5  # the rest is kept
    res = cli.invoke(app, ["clap-check", str(out), "--clear"])
    assert res.exit_code == 0 and "no clap check of its own" in res.output
    assert OnnxClassifier(out).metadata.clap_check == {}
    for bad, needle in [
        ("highpass_hz=300", "unknown setting 'highpass_hz'"),
        ("min_clap_score=2", "must be in [0, 1]"),
        ("min_clap_score", "not KEY=VALUE"),
        ("min_clap_score=high", "is not a number"),
    ]:
        res = cli.invoke(app, ["clap-check", str(out), "--set", bad])
        assert res.exit_code == 2 and needle in res.output and "--set" in res.output
    res = cli.invoke(app, [*args, "--clap-check", "min_clap_score=-1"])
    assert res.exit_code == 2 and "--clap-check: claudio.clap_check.min_clap_score" in res.output
    res = cli.invoke(app, ["clap-check", str(ckpt)])
    assert res.exit_code == 2 and "not an exported .onnx file" in res.output
