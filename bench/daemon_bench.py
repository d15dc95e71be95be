"""Daemon cost and latency: prints figures, asserts nothing.

    .venv/bin/python bench/daemon_bench.py [--model FILE] [--seconds 120]

* Cost: CPU time per second of audio for the whole pipeline (level gate, streaming log-mel,
  clap detector, classifier, rules) on one thread, for a quiet room and for continuous
  sound, and the peak resident memory of a process that runs it. Each scenario runs in a
  fresh subprocess so its peak memory is its own. Goals: < 1 % of a core quiet, < 10 %
  under continuous sound, < 200 MB.
* Latency: from the moment the pipeline decides a clap pattern to the moment a subscriber
  receives the command from a real Mosquitto, p50 and p95 (goal p95 < 150 ms).

The model is the shipped one unless --model is given; without either, an untrained
SE-ResNet18 of the same shape is exported (needs the [train] extra), since inference cost
depends on the architecture, not the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `bench` and `tests` import from the root
SHARED = ROOT.parent / "shared" / "data"
SR = 22050
RULES = """\
mqtt: {{host: 127.0.0.1, port: {port}, client_id: claudio-bench, reconnect_min_s: 0.2}}
model: {{path: {model}, threads: 1}}
audio: {{calibration: null}}
appliances:
  lamp: {{preset: tasmota, topic: lamp}}
  tv: {{preset: zigbee2mqtt, topic: living_room_tv}}
triggers:
  - {{claps: 2, actions: [lamp: toggle]}}
  - {{claps: 3, actions: [tv: toggle]}}
"""


def _model(arg: str | None, work: Path) -> Path:
    if arg:
        return Path(arg)
    from claudio_daemon.app import shipped_model

    shipped = shipped_model()
    if shipped is not None:
        return shipped
    from claudio_daemon.features.frontend import FrontEndConfig
    from claudio_daemon.model.metadata import ModelMetadata
    from training.export import export_module
    from training.models import create_model

    out = work / "se_resnet18-untrained.onnx"
    meta = ModelMetadata(
        labels=tuple(f"label{i}" for i in range(50)),
        frontend=FrontEndConfig(),
        model_name="se_resnet18",
    )
    export_module(create_model("se_resnet18", 50), out, meta)
    return out


def _continuous_audio(seconds: float) -> np.ndarray:
    """Real recordings of steady sound (rain, vacuum cleaner, washing machine...)."""
    from bench import scenes

    root = SHARED / "esc50-fold4-dev"
    if not root.exists():
        rng = np.random.default_rng(0)
        return (rng.standard_normal(int(seconds * SR)) * 0.05).astype(np.float32)
    cats = ["vacuum_cleaner", "rain", "washing_machine", "dog", "laughing", "engine"]
    clips = [x for _, x in scenes.load_backgrounds(root, cats, per_category=2)]
    audio = np.concatenate(clips)
    reps = int(np.ceil(seconds * SR / audio.size))
    return np.tile(audio, reps)[: int(seconds * SR)].astype(np.float32) * 0.5


def _quiet_audio(seconds: float) -> np.ndarray:
    """A quiet room through a decent microphone: noise around -70 dBFS."""
    rng = np.random.default_rng(1)
    return (rng.standard_normal(int(seconds * SR)) * 10 ** (-70 / 20)).astype(np.float32)


def cost_child(kind: str, model: str, seconds: float) -> None:
    """Runs in a subprocess: feeds the audio block by block and prints one JSON line."""
    from claudio_daemon.model.classifier import OnnxClassifier
    from claudio_daemon.pipeline import Pipeline
    from claudio_daemon.rules.loader import parse_rules

    rules = parse_rules(RULES.format(port=1883, model=model))
    audio = _quiet_audio(seconds) if kind == "quiet" else _continuous_audio(seconds)
    pipeline = Pipeline(rules, OnnxClassifier(Path(model), device="cpu", threads=1))
    warm = pipeline.classifier.scores(pipeline.mel.window())  # type: ignore[union-attr]
    assert warm
    block = 1024
    t0 = time.process_time()
    for i in range(0, audio.size, block):
        pipeline.process(audio[i : i + block])
    cpu = time.process_time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "kind": kind,
                "audio_s": audio.size / SR,
                "cpu_s": cpu,
                "core_percent": 100 * cpu / (audio.size / SR),
                "classifications": pipeline.stats.classifications,
                "peak_mb": peak_mb,
            }
        )
    )


def latency(model: Path, work: Path, patterns: int) -> list[float]:
    """Decision -> subscriber receipt through a real Mosquitto, in milliseconds."""
    from bench import scenes
    from claudio_daemon.events import Action
    from claudio_daemon.model.classifier import OnnxClassifier
    from claudio_daemon.mqtt.publisher import MqttPublisher
    from claudio_daemon.pipeline import Pipeline
    from claudio_daemon.rules.loader import parse_rules
    from tests.fixtures.broker import Subscriber, running_broker

    roots = [SHARED / "esc50-16k-folds123", SHARED / "esc50-fold4-dev"]
    claps = [c for c in scenes.cut_single_claps(roots) if scenes.clap_shaped(c)]
    rng = np.random.default_rng(3)
    with running_broker(work / "broker") as broker:
        rules = parse_rules(RULES.format(port=broker.port, model=model))
        pipeline = Pipeline(rules, OnnxClassifier(model, device="cpu", threads=1))
        publisher = MqttPublisher(rules.mqtt)
        publisher.start()
        publisher.wait_connected(10)
        out: list[float] = []
        with Subscriber(broker.host, broker.port, ["cmnd/#", "zigbee2mqtt/#"]) as sub:
            for _ in range(patterns):
                n = int(rng.integers(2, 4))
                gaps = rng.uniform(0.25, 0.6, size=n - 1)
                scene = scenes.make_pattern_scene(claps, n, list(gaps), None, 30.0, rng)
                before = len(sub.messages)
                decided = None
                for i in range(0, scene.audio.size, 1024):
                    events = pipeline.process(scene.audio[i : i + 1024])
                    for e in events:
                        if isinstance(e, Action):
                            decided = time.perf_counter()
                            publisher.send_action(e)
                    if decided is not None:
                        break
                if decided is None:
                    continue
                sub.wait_for(lambda m, b=before: len(m) > b, timeout=5)
                got = time.perf_counter()
                out.append((got - decided) * 1000)
                # Let the rest of the scene pass so patterns don't run together.
                pipeline.process(np.zeros(SR * 2, np.float32))
        publisher.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--patterns", type=int, default=30)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cost_child(args.child[0], args.child[1], args.seconds)
        return
    work = Path(tempfile.mkdtemp(prefix="claudio-bench-"))
    try:
        model = _model(args.model, work)
        print(f"model: {model}")
        header = ("scenario", "audio s", "CPU s", "% core", "classif.", "peak MB")
        print(f"{header[0]:<12}" + "".join(f"{h:>9}" for h in header[1:]))
        for kind in ("quiet", "continuous"):
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    str(model),
                    "--seconds",
                    str(args.seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(
                f"{kind:<12}{r['audio_s']:>9.0f}{r['cpu_s']:>9.2f}{r['core_percent']:>9.2f}"
                f"{r['classifications']:>9}{r['peak_mb']:>9.0f}"
            )
        if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
            lat = latency(model, work, args.patterns)
            if lat:
                p50, p95 = np.percentile(lat, [50, 95])
                print(
                    f"decision -> MQTT receipt over {len(lat)} patterns: "
                    f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(lat):.1f} ms"
                )
        else:
            print("latency: skipped (mosquitto not installed)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
