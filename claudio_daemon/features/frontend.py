"""The input contract shared by training and the daemon.

Both sides build their log-mel front end from this one description, and the exported
ONNX model carries it in its metadata, so nothing is copied by hand between them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

#: What the daemon's numpy front end (features/logmel.py) can compute; a model asking for
#: anything else would load and then fail on the first audio, or score garbage.
SUPPORTED_MEL_SCALES: tuple[str, ...] = ("htk",)
SUPPORTED_POWERS: tuple[float, ...] = (2.0,)
#: Keys a model's metadata may leave out because their default cannot change any score.
OPTIONAL_KEYS: frozenset[str] = frozenset({"extra"})
#: Field annotation -> (the JSON value it needs, how to say so). Bools are not numbers here.
_JSON_TYPES: dict[str, tuple[type, str]] = {
    "int": (int, "an integer"),
    "float": (float, "a number"),
    "bool": (bool, "true or false"),
    "str": (str, "a string"),
    "dict": (dict, "a JSON object"),
}


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
        """Parse and check a stored front end (model metadata, checkpoint, cache index).

        The values come from a file, not from code, so each is checked here: a zero or
        missing std would make every score NaN (sound rules silently never fire), a
        string sample rate or a zero hop would crash later with a bare traceback. The
        ValueError names the field; the model loader adds the file.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"front end must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown front-end settings in model metadata: {sorted(unknown)}")
        # A missing mean/std would silently become 0/1 (un-normalised input): require all.
        missing = known - set(data) - OPTIONAL_KEYS
        if missing:
            raise ValueError(f"front-end settings missing from model metadata: {sorted(missing)}")
        values: dict = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            kind, what = _JSON_TYPES[str(f.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # JSON 80 for 80.0: same value, same to_json()
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{f.name} must be {what}, got {value!r}")
            values[f.name] = value
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first setting the daemon cannot use as given."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        if self.hop_length > self.n_fft:
            raise bad("hop_length", f"must not exceed n_fft ({self.n_fft})")
        for name in ("clip_seconds", "f_min", "f_max", "top_db", "amin", "mean", "std"):
            if not math.isfinite(getattr(self, name)):
                raise bad(name, "must be a finite number")
        for name in ("clip_seconds", "top_db", "amin", "std"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        if self.clip_samples < self.n_fft:
            raise bad("clip_seconds", f"must hold at least n_fft ({self.n_fft}) samples")
        if not 0 <= self.f_min < self.f_max:
            raise bad("f_min", f"must be >= 0 and below f_max ({self.f_max})")
        if self.f_max > self.sample_rate / 2:
            raise bad("f_max", f"must not exceed half the sample rate ({self.sample_rate / 2})")
        if self.mel_scale not in SUPPORTED_MEL_SCALES:
            raise bad("mel_scale", f"must be one of {list(SUPPORTED_MEL_SCALES)}")
        if self.power not in SUPPORTED_POWERS:
            raise bad("power", f"must be one of {list(SUPPORTED_POWERS)}")

    def with_stats(self, mean: float, std: float) -> FrontEndConfig:
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        return FrontEndConfig(**{**asdict(self), "mean": float(mean), "std": float(std)})
