"""Reading recordings from disk (replays, tests, `classify FILE`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


class AudioFileError(ValueError):
    """A recording could not be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG (anything libsndfile reads) to float32 mono at the file's rate.

    Channels are averaged, as training does, so a sound on one side of a stereo recording
    is kept whichever side it is on.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioFileError(path, "file is empty (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioFileError(path, f"cannot decode audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioFileError(path, "recording has no samples")
    if rate <= 0:
        raise AudioFileError(path, f"invalid sample rate {rate}")
    mono = data.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioFileError(path, "recording contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)
