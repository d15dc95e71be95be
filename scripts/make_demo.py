"""Builds demo/claps-demo.flac, the recording the quick start plays when there is no microphone.

Real claps and a real door knock cut from ESC-50 (../shared/data), laid out as a person
would use Claudio: two claps (lamp), a knock at the door (nothing), three claps (TV), over
a quiet real room background. Run once by a developer; the result is committed (about
15 s, well under 1 MB) with its attribution in demo/ATTRIBUTION.txt.

    .venv/bin/python scripts/make_demo.py ../shared/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import scenes  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "demo" / "claps-demo.flac"


def main(root: str) -> None:
    roots = [Path(root) / "esc50-fold4-dev", Path(root) / "esc50-16k-folds123"]
    rng = np.random.default_rng(7)
    claps = scenes.cut_single_claps(roots)
    knocks = scenes.cut_events(roots[0], "door_wood_knock", length_s=0.25)
    backgrounds = dict(scenes.load_backgrounds(roots[0], ["rain"], per_category=1))
    bg = backgrounds["rain"]
    sr = scenes.SAMPLE_RATE
    parts = [
        scenes.make_pattern_scene(claps, 2, [0.45], (("rain", bg)), 30.0, rng, tail_s=2.5).audio,
        scenes.make_pattern_scene(
            knocks, 3, [0.18, 0.2], ("rain", bg), 30.0, rng, kind="knock_pattern", tail_s=2.5
        ).audio,
        scenes.make_pattern_scene(claps, 3, [0.4, 0.45], ("rain", bg), 30.0, rng, tail_s=2.5).audio,
    ]
    audio = np.concatenate(parts)
    OUT.parent.mkdir(exist_ok=True)
    sf.write(OUT, (audio * 0.9).astype(np.float32), sr, subtype="PCM_16")
    print(f"wrote {OUT} ({len(audio) / sr:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
