"""Streaming sample-rate conversion from the device's rate to the model's rate.

soxr keeps filter state between blocks, so resampling a stream block by block gives the
same audio as resampling it whole (up to the last ulp), whatever the block size. That
is what lets the front end be chunk-size independent on a live microphone.
"""

from __future__ import annotations

import numpy as np
import soxr


class StreamingResampler:
    """Mono float32 resampler for a continuous stream; pass-through when rates match."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._quality = quality
        self._stream: soxr.ResampleStream | None = None
        self.reset()

    @property
    def passthrough(self) -> bool:
        return self.in_rate == self.out_rate

    def reset(self) -> None:
        """Drop the filter state (after a gap in the stream, e.g. a reopened device)."""
        self._stream = (
            None
            if self.passthrough
            else soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=self._quality
            )
        )

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample one block; may return fewer or more samples than the ratio suggests
        because the filter holds a short delay line."""
        x = np.ascontiguousarray(np.asarray(block, dtype=np.float32).reshape(-1))
        if self._stream is None:
            return x.copy()
        return self._stream.resample_chunk(x, last=False)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter at the end of the stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.reset()
        return out
