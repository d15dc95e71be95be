"""A level gate: is anything happening above the room's own noise?

Running the classifier costs far more than measuring a level, and a home is quiet most
of the time, so the daemon asks this gate first (as Frigate gates audio by level before
its model) and only classifies while it is open. The noise floor follows the room: a
steady fan or fridge becomes the floor (a new noise 20 dB up stops holding the gate open
after about 1.2 * `floor_adapt_s`), while a clap or a bark stands well above it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

#: Level reported for digital silence, so the number stays finite (JSON, MQTT).
SILENCE_DB = -120.0


def level_db(samples: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale sine is -3.01 dB); SILENCE_DB for silence/empty."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return SILENCE_DB
    ms = float(np.dot(x, x)) / x.size
    return max(SILENCE_DB, 10.0 * math.log10(ms)) if ms > 0 else SILENCE_DB


class GateReading(NamedTuple):
    #: Stream sample index just past the analysis window.
    end_sample: int
    level_db: float
    #: The floor the level was compared with (before this window updated it).
    noise_floor_db: float
    active: bool


class ActivityGate:
    """Level vs. adaptive noise floor, per fixed analysis window, with hangover.

    The floor is an asymmetric exponential follower in dB: it falls with time constant
    `floor_fall_s` (a quiet spell is believed quickly) and rises with time constant
    `floor_adapt_s` (a new steady noise is accepted only after it has lasted: a jump of J dB
    keeps the gate open for about floor_adapt_s * ln(J / margin)). A brief loud event
    barely moves it (a 0.1 s clap 30 dB up lifts it by 0.3 dB).
    The gate is active when level >= floor + open_db_above_floor and level >= min_level_db,
    and stays active for `hangover_s` after the last such window, so the classifier sees
    a sound's tail and the gaps between claps.

    Windows are counted from the first sample pushed, so results do not depend on how
    the audio is chunked. Without `initial_floor_db` the first window's level is the floor.
    """

    def __init__(
        self,
        sample_rate: int,
        window_s: float = 0.1,
        floor_adapt_s: float = 10.0,
        open_db_above_floor: float = 6.0,
        min_level_db: float = -60.0,
        hangover_s: float = 1.0,
        initial_floor_db: float | None = None,
        floor_fall_s: float = 0.5,
    ) -> None:
        if sample_rate <= 0 or window_s <= 0 or floor_adapt_s <= 0 or floor_fall_s <= 0:
            raise ValueError("sample_rate, window_s, floor_adapt_s and floor_fall_s must be > 0")
        self.sample_rate = int(sample_rate)
        self.window = max(1, int(round(window_s * sample_rate)))
        win_s = self.window / self.sample_rate
        self._rise = 1.0 - math.exp(-win_s / floor_adapt_s)
        self._fall = 1.0 - math.exp(-win_s / floor_fall_s)
        self.open_db_above_floor = float(open_db_above_floor)
        self.min_level_db = float(min_level_db)
        self._hang_windows = int(math.ceil(hangover_s / win_s - 1e-9)) if hangover_s > 0 else 0
        self._initial_floor = initial_floor_db
        self._buf = np.zeros(self.window, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self._fill = 0
        self._samples = 0
        self._floor: float | None = self._initial_floor
        self._hang = 0
        self._active = False
        self._level = SILENCE_DB

    @property
    def active(self) -> bool:
        return self._active

    @property
    def noise_floor_db(self) -> float:
        return SILENCE_DB if self._floor is None else self._floor

    @property
    def last_level_db(self) -> float:
        return self._level

    @property
    def samples_seen(self) -> int:
        return self._samples

    def push(self, samples: np.ndarray) -> list[GateReading]:
        """Add audio; one GateReading per analysis window completed by it."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        out: list[GateReading] = []
        pos = 0
        while pos < x.size:
            take = min(self.window - self._fill, x.size - pos)
            self._buf[self._fill : self._fill + take] = x[pos : pos + take]
            self._fill += take
            pos += take
            self._samples += take
            if self._fill == self.window:
                self._fill = 0
                out.append(self._judge(level_db(self._buf)))
        return out

    def _judge(self, level: float) -> GateReading:
        floor = level if self._floor is None else self._floor
        loud = level >= floor + self.open_db_above_floor and level >= self.min_level_db
        if loud:
            self._hang = self._hang_windows
            active = True
        elif self._hang > 0:
            self._hang -= 1
            active = True
        else:
            active = False
        rate = self._fall if level < floor else self._rise
        self._floor = floor + rate * (level - floor)
        self._active = active
        self._level = level
        return GateReading(self._samples, level, floor, active)
