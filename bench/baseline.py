"""The baseline the clap benchmark compares Claudio with: a plain amplitude-threshold counter.

It imitates what small clap-switch projects do, e.g. the Arduino "clap switch" sketches
built on a KY-037/KY-038 sound-sensor module (the module's comparator goes high when the
amplitude crosses a threshold set with its potentiometer; the sketch ignores further
triggers for a debounce time, counts triggers, and acts on the count once no clap has come
for a while) and Python Raspberry Pi clap listeners in the style of `pi-clap` (read a
block of samples, a clap is a block whose peak amplitude exceeds a fixed threshold, wait
between claps, count claps until a quiet spell). Concretely:

* the signal is read in blocks of `block` samples (about 12 ms);
* a block whose largest absolute sample is above `threshold` is a clap, unless the
  previous clap was less than `debounce_s` ago (the clap's own ring);
* `end_silence_s` without a clap ends the count, which is reported as a pattern of that
  many claps (any count: such libraries have no notion of applause).

There is no noise floor, no shape test and no classifier. The threshold is a fixed
amplitude, set once like the potentiometer (the benchmark sets it from the clean claps).
It speaks the daemon's language (`ClapPattern`) so the benchmark scores both the same way.
"""

from __future__ import annotations

import numpy as np

from claudio_daemon.events import ClapPattern


class ThresholdClapCounter:
    """`push(samples) -> list[ClapPattern]`, streaming, independent of chunk sizes."""

    def __init__(
        self,
        threshold: float,
        sample_rate: int = 22050,
        *,
        block: int = 256,
        debounce_s: float = 0.15,
        end_silence_s: float = 0.9,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold is an amplitude in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.sample_rate = sample_rate
        self.block = int(block)
        self.debounce = int(round(debounce_s * sample_rate))
        self.end_silence = int(round(end_silence_s * sample_rate))
        self._buf = np.zeros(0, dtype=np.float32)
        self._pos = 0  # stream index of the first sample in _buf
        self._claps: list[int] = []
        self._last = -(10**12)

    def push(self, samples: np.ndarray) -> list[ClapPattern]:
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float32).reshape(-1)])
        out: list[ClapPattern] = []
        n_blocks = self._buf.size // self.block
        if n_blocks:
            peaks = np.abs(self._buf[: n_blocks * self.block]).reshape(n_blocks, -1).max(axis=1)
            for k, peak in enumerate(peaks):
                start = self._pos + k * self.block
                end = start + self.block
                out += self._expire(start)
                if peak > self.threshold and start - self._last >= self.debounce:
                    self._claps.append(start)
                    self._last = start
                out += self._expire(end)
            self._buf = self._buf[n_blocks * self.block :]
            self._pos += n_blocks * self.block
        return out

    def _expire(self, now: int) -> list[ClapPattern]:
        if not self._claps or now - self._claps[-1] < self.end_silence:
            return []
        claps, self._claps = self._claps, []
        return [
            ClapPattern(
                count=len(claps),
                clap_samples=tuple(claps),
                decided_sample=int(now),
                level_db=float(20 * np.log10(self.threshold)),
            )
        ]


def threshold_from_claps(
    claps: list[np.ndarray], gains: list[float], below_db: float = 6.0
) -> float:
    """The potentiometer setting: `below_db` under the median peak amplitude of clean claps.

    Generous to the baseline: it knows how loud the claps in the scenes will be.
    """
    peaks = [float(np.max(np.abs(c))) * g for c, g in zip(claps, gains, strict=True)]
    return float(np.median(peaks) * 10 ** (-below_db / 20))
