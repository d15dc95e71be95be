"""The input contract shared by training and the daemon.

Both sides build their log-mel front end from this one description, and the exported
ONNX model carries it in its metadata, so nothing is copied by hand between them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FrontEndConfig:
    """How audio becomes the model's input (1 x n_mels x n_frames).

    The defaults are the study's contract: 22,050 Hz mono, 5.94 s clips, 128 mel bins
    (HTK scale, no filter normalisation, as torchaudio's MelSpectrogram defaults),
    n_fft 2048, hop 512, 100 to 10,000 Hz, power spectrogram in dB with an 80 dB range
    below each clip's maximum, then (x - mean) / std with the training set's statistics.
    """

    sample_rate: int = 22050
    clip_seconds: float = 5.94
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 100.0
    f_max: float = 10000.0
    top_db: float = 80.0
    power: float = 2.0
    center: bool = True
    mel_scale: str = "htk"
    #: Floor applied before log10, as torchaudio's AmplitudeToDB(amin=1e-10).
    amin: float = 1e-10
    #: Training-set statistics of the dB spectrogram; identity until `stats` fills them.
    mean: float = 0.0
    std: float = 1.0
    extra: dict = field(default_factory=dict)

    @property
    def clip_samples(self) -> int:
        """Samples in one clip: round(5.94 * 22050) = 130,977 with the defaults."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """STFT frames per clip: 256 with the defaults (centre padding adds one frame)."""
        if self.center:
            return self.clip_samples // self.hop_length + 1
        return (self.clip_samples - self.n_fft) // self.hop_length + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FrontEndConfig:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown front-end settings in model metadata: {sorted(unknown)}")
        return cls(**data)

    def with_stats(self, mean: float, std: float) -> FrontEndConfig:
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        return FrontEndConfig(**{**asdict(self), "mean": float(mean), "std": float(std)})
