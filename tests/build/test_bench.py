from __future__ import annotations

import json
from typing import Any

import pytest

from edge_deploy.model.bench import bench_bundle
from edge_runtime.errors import InputError
from tests.build.cli_helpers import run_cli


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_bench_reports_latency_and_memory(make_bundle: Any, precision: str) -> None:
    result = bench_bundle(make_bundle(precision).bundle.path, runs=20, warmup=2, batch=2)
    lat = result.latency
    assert result.precision == precision and result.backend == "onnxruntime"
    assert lat.runs == 20 and lat.batch == 2
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    assert lat.throughput_per_s == pytest.approx(2 * 1000 / lat.mean_ms)
    assert result.peak_rss_mb > 10


def test_bench_refuses_batch_outside_profile(make_bundle: Any) -> None:
    with pytest.raises(InputError, match=r"outside the bundle's profile 1\.\.8"):
        bench_bundle(make_bundle("fp32").bundle.path, runs=1, batch=9)


def test_bench_cli_json_and_table(make_bundle: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_bundle("int8").bundle.path
    rc, out, _ = run_cli(capsys, "bench", path, "--runs", "10", "--warmup", "1", "--json")
    assert rc == 0
    data = json.loads(out)
    assert {"mean_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "peak_rss_mb"} <= set(data)
    assert data["runs"] == 10 and data["precision"] == "int8"
    assert data["validation"]["int8_vs_fp32"]["passed"] is True
    rc, out, _ = run_cli(capsys, "bench", path, "--runs", "5", "--warmup", "0")
    assert rc == 0 and "p99 (ms)" in out and "int8_vs_fp32" in out
