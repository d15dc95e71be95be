"""bench/train_bench.py runs end to end and prints its rows (figures, not timed asserts)."""

from __future__ import annotations

import pytest

from bench.train_bench import main


def test_train_bench_prints_plain_and_fit_throughput_and_latency(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["--models", "simple_cnn", "--steps", "1", "--runs", "2", "--classes", "10"])
    out = capsys.readouterr().out.splitlines()
    assert "as fit" in next(line for line in out if line.startswith("model"))
    torch_row = next(line.split() for line in out if " torch-cpu " in line)
    plain, as_fit, p50, p95 = map(float, torch_row[3:7])
    assert plain > 0 and as_fit > 0 and 0 < p50 <= p95
    ort_row = next(line.split() for line in out if " ort-cpu " in line)
    assert ort_row[0] == "simple_cnn" and float(ort_row[5]) > 0
