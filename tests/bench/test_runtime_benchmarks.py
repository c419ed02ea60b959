"""The bench framework and the runtime benchmarks, run small (1 repeat, few calls)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.__main__ import render, table, write_result

REPO = Path(__file__).resolve().parents[2]


def test_table_and_result_file(tmp_path: Path) -> None:
    text = table([{"path": "raw", "p50_ms": 1.23456}, {"path": "POST npz", "p50_ms": 2.5}])
    assert text.splitlines()[0].split() == ["path", "p50_ms"] and "1.235" in text
    assert "runs: 3" in render("x", {"runs": 3, "rows": [{"a": 1}]})
    path = write_result("x", {"runs": 3}, tmp_path)
    assert json.loads(path.read_text()) == {"runs": 3} and not list(tmp_path.glob("*.tmp"))


def test_startup_and_service_overhead_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)])}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "startup",
            "service_overhead",
            "--repeats",
            "1",
            "--runs",
            "20",
            "--out",
            str(tmp_path),
            "--json",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    startup = results["startup"]
    phases = [row["start"] for row in startup["rows"] if row["backend"] == "onnxruntime"]
    assert phases == ["cold (build)", "warm (cache hit)"]
    assert all(row["ready_s_median"] > 0 for row in startup["rows"])
    overhead = results["service_overhead"]
    paths = [row["path"] for row in overhead["rows"]]
    assert paths == [
        "raw engine.infer",
        "POST npz",
        "POST v2 binary",
        "POST JSON",
        "raw engine.infer (inline run)",
        "POST npz inline",
        "POST v2 binary inline",
        "raw engine.infer",
        "POST npz",
        "POST v2 binary",
        "raw engine.infer (inline run)",
        "POST npz inline",
        "POST v2 binary inline",
        "no-op ASGI app (HTTP floor)",
    ]
    assert overhead["fixed_added_p50_ms"] > 0 and overhead["fixed_v2_added_p50_ms"] > 0
    assert all(row["p99_ms"] >= row["p50_ms"] > 0 for row in overhead["rows"])
    assert overhead["http_floor_p50_ms"] > 0
    assert (tmp_path / "startup.json").is_file() and (tmp_path / "service_overhead.json").is_file()
