"""The sound classifier: an exported ONNX model run with onnxruntime.

Everything the daemon needs to feed the model (labels, front-end settings, training-set
statistics, whether the output is logits) comes from the model file's own metadata, so
a new model is a file swap, never a config edit that could silently disagree with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.features.logmel import logmel_clip
from claudio_daemon.model.metadata import ModelMetadata, ModelMetadataError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


class ModelLoadError(RuntimeError):
    """The model file is missing, not ONNX, or lacks Claudio metadata; names the file."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so large |x| never overflows exp.
    out = np.empty_like(x, dtype=np.float32)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


class OnnxClassifier:
    """Multi-label classifier over (B, 1, n_mels, n_frames) log-mel windows."""

    def __init__(self, path: str | Path, device: Device = "auto", threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: model file not found")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        available = ort.get_available_providers()
        cuda_ok = "CUDAExecutionProvider" in available
        if device == "cuda" and not cuda_ok:
            raise ModelLoadError(
                f"{self.path}: device 'cuda' asked for but onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use cpu"
            )
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and cuda_ok:
            providers.insert(0, "CUDAExecutionProvider")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Fusions (Conv+BN, activations) but not the NCHWc layout rewrite of ENABLE_ALL,
        # which copies every weight: measured 96 MB instead of 172 MB resident for the
        # SE-ResNet18 at about the same speed, which matters on a Raspberry Pi.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{self.path}: not a usable ONNX model ({exc})") from exc
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.metadata = ModelMetadata.from_onnx_props(props, source=str(self.path))
        except ModelMetadataError as exc:
            raise ModelLoadError(str(exc)) from exc

        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelLoadError(
                f"{self.path}: expected one input and one output, got "
                f"{len(inputs)} inputs and {len(outputs)} outputs"
            )
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        fe = self.metadata.frontend
        expected = (1, fe.n_mels, fe.n_frames)
        shape = tuple(inputs[0].shape)
        if len(shape) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)
        ):
            raise ModelLoadError(
                f"{self.path}: model input {inputs[0].name!r} has shape {list(shape)}, but its "
                f"front-end metadata implies (batch, {', '.join(map(str, expected))})"
            )
        n_out = outputs[0].shape[-1] if outputs[0].shape else None
        if isinstance(n_out, int) and n_out != len(self.metadata.labels):
            raise ModelLoadError(
                f"{self.path}: model has {n_out} outputs but metadata lists "
                f"{len(self.metadata.labels)} labels"
            )
        self.providers = self.session.get_providers()
        log.info(
            "model %r (%d labels) from %s on %s, %d thread(s)",
            self.metadata.model_name,
            len(self.labels),
            self.path.name,
            self.providers[0],
            opts.intra_op_num_threads,
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.metadata.labels

    @property
    def frontend(self) -> FrontEndConfig:
        return self.metadata.frontend

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(B, 1, n_mels, n_frames) normalised log-mels -> (B, n_labels) probabilities."""
        x = np.asarray(batch, dtype=np.float32)
        fe = self.frontend
        if x.ndim != 4 or x.shape[1:] != (1, fe.n_mels, fe.n_frames):
            raise ValueError(
                f"model input must be (batch, 1, {fe.n_mels}, {fe.n_frames}), got {x.shape}"
            )
        out = self.session.run([self._output_name], {self._input_name: np.ascontiguousarray(x)})
        scores = np.asarray(out[0], dtype=np.float32)
        if self.metadata.output == "logits":
            scores = _sigmoid(scores)
        return scores

    def scores(self, window: np.ndarray) -> dict[str, float]:
        """One window (1, 1, n_mels, n_frames) -> {label: probability}."""
        probs = self.predict(window)
        if probs.shape[0] != 1:
            raise ValueError(f"scores() takes one window, got a batch of {probs.shape[0]}")
        return {label: float(p) for label, p in zip(self.labels, probs[0], strict=True)}

    def classify_audio(self, audio: np.ndarray) -> dict[str, float]:
        """A short segment at the front end's rate, repeat-padded to a clip as in training."""
        mel = logmel_clip(audio, self.frontend)
        return self.scores(mel[None, None])
