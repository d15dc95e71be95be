"""Training throughput and inference latency of each model; prints figures, asserts nothing.

    python bench/train_bench.py --models se_resnet18,simple_cnn --steps 20

For each model: training clips/s (forward + backward + AdamW step, batch 16) twice, plain
(float32 on the CPU, float16 AMP on CUDA; NCHW) and as `fit` trains (also bfloat16
autocast on a CPU with native bf16, and channels-last order where that is faster), and
single-window inference latency (batch 1, p50/p95 ms) with torch on the CPU, on CUDA when
present, and with onnxruntime on the CPU for the exported graph, which is what the daemon
runs. Inputs are random (1, 128, 256) log-mels: the cost of these models does not depend
on the values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.fit import autocast_for, channels_last_for  # noqa: E402
from training.models import MODEL_NAMES, count_parameters, create_model  # noqa: E402

SHAPE = (1, 128, 256)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(
    name: str,
    device: torch.device,
    steps: int,
    batch: int,
    n_classes: int,
    *,
    as_fit: bool = False,
) -> float:
    """Clips per second through forward, BCE loss, backward and an optimiser step.

    `as_fit` adds what `fit` does beyond the plain loop: on a CPU with native bf16,
    bfloat16 autocast, and where that is faster, channels-last order.
    """
    torch.manual_seed(0)
    model = create_model(name, n_classes).to(device).train()
    amp, dtype = autocast_for(device) if as_fit else (device.type == "cuda", torch.float16)
    if as_fit and channels_last_for(device):
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    x = torch.randn((batch, *SHAPE), device=device)
    y = (torch.rand((batch, n_classes), device=device) < 0.05).float()

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(min(3, steps)):  # warm-up: kernel selection, allocator
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _percentiles(times_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(times_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


@torch.no_grad()
def torch_latency(
    name: str, device: torch.device, runs: int, n_classes: int
) -> tuple[float, float]:
    model = create_model(name, n_classes).to(device).eval()
    x = torch.randn((1, *SHAPE), device=device)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return _percentiles(times)


def onnx_latency(name: str, runs: int, n_classes: int, threads: int) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, file MB) of the exported float model in onnxruntime on the CPU."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model(name, n_classes).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter, on purpose
            torch.onnx.export(
                model,
                (torch.randn((1, *SHAPE)),),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["mel"],
                output_names=["logits"],
                dynamic_axes={"mel": {0: "batch"}, "logits": {0: "batch"}},
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        size_mb = path.stat().st_size / 1e6
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"mel": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"mel": x})
        times.append(time.perf_counter() - t0)
    return (*_percentiles(times), size_mb)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models",
        default="se_resnet18,simple_cnn",
        help=f"comma-separated, from {', '.join(MODEL_NAMES)}",
    )
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=0, help="latency runs (default 3 x steps)")
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    ap.add_argument("--no-cuda", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = args.runs or max(5, 3 * args.steps)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", CUDA {torch.cuda.get_device_name(0)}" if len(devices) > 1 else ", no CUDA")
        + f"; input {SHAPE}, {args.classes} classes, train batch {args.batch}, "
        f"{args.steps} steps, {runs} latency runs"
    )
    header = (
        f"{'model':<12} {'params':>8} {'device':<9} {'train clips/s':>13} "
        f"{'as fit':>7} {'p50 ms':>8} {'p95 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        n_params = count_parameters(create_model(name, args.classes)) / 1e6
        for dev in devices:
            thr = train_throughput(name, dev, args.steps, args.batch, args.classes)
            fit_thr = train_throughput(name, dev, args.steps, args.batch, args.classes, as_fit=True)
            p50, p95 = torch_latency(name, dev, runs, args.classes)
            label = "torch-" + dev.type
            print(
                f"{name:<12} {n_params:>7.2f}M {label:<9} {thr:>13.1f} {fit_thr:>7.1f} "
                f"{p50:>8.2f} {p95:>8.2f}"
            )
        p50, p95, mb = onnx_latency(name, runs, args.classes, torch.get_num_threads())
        print(
            f"{name:<12} {n_params:>7.2f}M {'ort-cpu':<9} {'-':>13} {'-':>7} {p50:>8.2f} "
            f"{p95:>8.2f}   ({mb:.1f} MB ONNX)"
        )


if __name__ == "__main__":
    main()
