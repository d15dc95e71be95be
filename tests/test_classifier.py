"""OnnxClassifier on the tiny hand-weighted model (tests/fixtures/onnx_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.features.logmel import logmel_clip
from claudio_daemon.model.classifier import ModelLoadError, OnnxClassifier
from tests.fixtures.onnx_model import (
    DEFAULT_LABELS,
    TINY_FRONTEND,
    build_tiny_onnx_model,
    tiny_weights,
)

onnx = pytest.importorskip("onnx")
RATE = TINY_FRONTEND.sample_rate


def _band_noise(lo_hz: float, hi_hz: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(RATE * seconds)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spec[(freqs < lo_hz) | (freqs > hi_hz)] = 0
    x = np.fft.irfft(spec, n)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def clf(tiny_onnx_model: Path) -> OnnxClassifier:
    return OnnxClassifier(tiny_onnx_model, device="cpu", threads=1)


def test_reads_metadata(clf: OnnxClassifier) -> None:
    assert clf.labels == DEFAULT_LABELS
    assert clf.frontend == TINY_FRONTEND
    assert clf.metadata.model_name == "tiny-test" and clf.metadata.output == "logits"
    assert clf.providers[0] == "CPUExecutionProvider"


def test_predict_is_sigmoid_of_the_models_logits(clf: OnnxClassifier) -> None:
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((3, 1, 128, 256)).astype(np.float32)
    batch[1] += 1.5
    probs = clf.predict(batch)
    w, b = tiny_weights(DEFAULT_LABELS, 128)
    logits = batch[:, 0].mean(axis=2) @ w + b
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-5)
    assert probs.shape == (3, 6) and probs.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(batch, 1, 128, 256\)"):
        clf.predict(batch[:, :, :64])
    with pytest.raises(ValueError, match="one window"):
        clf.scores(batch)


def test_classify_audio_behaviour(clf: OnnxClassifier) -> None:
    def top(scores: dict[str, float]) -> str:
        return max(scores, key=scores.__getitem__)

    hiss = _band_noise(5000, 10000, 0.3)  # short: repeat-padded like training
    thump = _band_noise(100, 250, 0.5)
    assert top(clf.classify_audio(hiss)) == "clapping"
    assert top(clf.classify_audio(thump)) == "door_wood_knock"
    silent = clf.classify_audio(np.zeros(2000, dtype=np.float32))
    assert top(silent) == "silence" and silent["silence"] > 0.8
    window = logmel_clip(hiss, clf.frontend)[None, None]
    assert clf.classify_audio(hiss) == clf.scores(window)
    assert all(0.0 <= v <= 1.0 for v in clf.scores(window).values())


def test_probability_models_are_not_squashed_twice(tmp_path: Path, clf: OnnxClassifier) -> None:
    path = build_tiny_onnx_model(tmp_path / "p.onnx", output="probabilities")
    probs_model = OnnxClassifier(path, device="auto")
    x = np.random.default_rng(4).standard_normal((2, 1, 128, 256)).astype(np.float32)
    np.testing.assert_allclose(probs_model.predict(x), clf.predict(x), atol=1e-6)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nope.onnx: model file not found"):
        OnnxClassifier(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("definitely not protobuf")
    with pytest.raises(ModelLoadError, match="junk.onnx: not a usable ONNX model"):
        OnnxClassifier(junk)
    bare = build_tiny_onnx_model(tmp_path / "bare.onnx", with_metadata=False)
    with pytest.raises(ModelLoadError, match=r"bare.onnx.*claudio.format_version"):
        OnnxClassifier(bare)
    with pytest.raises(ValueError, match="device"):
        OnnxClassifier(bare, device="tpu")  # type: ignore[arg-type]


def test_metadata_that_disagrees_with_the_graph_is_refused(tmp_path: Path) -> None:
    path = build_tiny_onnx_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "claudio.frontend":
            prop.value = TINY_FRONTEND.__class__(n_mels=64).to_json()
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match=r"m.onnx: model input 'mel' has shape"):
        OnnxClassifier(path)
    labels_path = build_tiny_onnx_model(tmp_path / "l.onnx", labels=("a", "b", "c"))
    model = onnx.load(str(labels_path))
    for prop in model.metadata_props:
        if prop.key == "claudio.labels":
            prop.value = '["a", "b"]'
    onnx.save(model, str(labels_path))
    with pytest.raises(ModelLoadError, match="3 outputs but metadata lists 2 labels"):
        OnnxClassifier(labels_path)


def test_cuda_request(tiny_onnx_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert OnnxClassifier(tiny_onnx_model, device="cuda").providers[0] == (
            "CUDAExecutionProvider"
        )
    else:
        with pytest.raises(ModelLoadError, match="no CUDA provider"):
            OnnxClassifier(tiny_onnx_model, device="cuda")


def _model_with_frontend(tmp_path: Path, frontend_json: str) -> Path:
    path = build_tiny_onnx_model(tmp_path / "fe.onnx")
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "claudio.frontend":
            prop.value = frontend_json
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"std": 0.0}, "std"),  # would load and score every window NaN
        ({"std": -20.0}, "std"),  # would load with inverted scores
        ({"std": float("nan")}, "std"),  # JSON NaN
        ({"mean": None}, "mean"),  # would load and score every window NaN
        ({"mean": True}, "mean"),
        ({"hop_length": 0}, "hop_length"),  # ZeroDivisionError traceback
        ({"n_fft": 256}, "hop_length"),  # hop 512 > n_fft: crash on the first audio block
        ({"n_mels": -1}, "n_mels"),
        ({"sample_rate": "22050"}, "sample_rate"),  # TypeError traceback
        ({"f_max": 20000.0}, "f_max"),  # above Nyquist at 22,050 Hz
        ({"f_min": 10000.0}, "f_min"),
        ({"mel_scale": "slaney"}, "mel_scale"),  # ValueError only when the pipeline is built
        ({"power": 1.0}, "power"),
        ({"center": "yes"}, "center"),
        ({"clip_seconds": 0.01}, "clip_seconds"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_frontend_metadata_is_refused_at_load(tmp_path: Path, change: dict, field: str) -> None:
    bad = {**json.loads(TINY_FRONTEND.to_json()), **change}
    path = _model_with_frontend(tmp_path, json.dumps(bad))
    with pytest.raises(ModelLoadError, match=rf"fe\.onnx: claudio\.frontend: .*{field}"):
        OnnxClassifier(path, device="cpu")


def test_frontend_metadata_missing_the_statistics_is_refused(tmp_path: Path) -> None:
    # Defaults would silently feed the model un-normalised input (mean 0, std 1).
    data = json.loads(TINY_FRONTEND.to_json())
    del data["mean"], data["std"]
    path = _model_with_frontend(tmp_path, json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"fe\.onnx: .*missing.*\['mean', 'std'\]"):
        OnnxClassifier(path, device="cpu")


def test_valid_frontend_metadata_still_loads(tmp_path: Path) -> None:
    # What training/export.py writes (FrontEndConfig.to_json), with whole numbers written
    # as JSON integers and `extra` left out, loads as the same front end.
    data = json.loads(TINY_FRONTEND.to_json())
    data.update(f_min=100, f_max=10000, top_db=80, std=20)
    del data["extra"]
    clf = OnnxClassifier(_model_with_frontend(tmp_path, json.dumps(data)), device="cpu")
    assert clf.frontend == TINY_FRONTEND and clf.frontend.to_json() == TINY_FRONTEND.to_json()
    assert FrontEndConfig.from_json(FrontEndConfig().to_json()) == FrontEndConfig()


def test_shipped_model_loads() -> None:
    shipped = Path(__file__).resolve().parents[1] / "models" / "claudio-esc50-se_resnet18.onnx"
    if not shipped.is_file():
        pytest.skip(f"{shipped} not present")
    fe = OnnxClassifier(shipped, device="cpu").frontend
    assert (fe.sample_rate, fe.n_mels, fe.n_frames, fe.mel_scale) == (22050, 128, 256, "htk")
    assert fe.std > 0
