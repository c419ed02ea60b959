from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edge_runtime.cli import cli
from edge_runtime.tune import parse_cpus, plan


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def test_engine_build_list_verify_clear(tiny_bundle: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    code, out = invoke("engine", "build", "--bundle", str(tiny_bundle), "--cache", cache, "--backend",
                       "onnxruntime", "--json")
    assert code == 0, out
    built = json.loads(out[out.index("{"):])
    assert built["hit"] is False
    code, out = invoke("engine", "build", "--bundle", str(tiny_bundle), "--cache", cache, "--backend",
                       "onnxruntime", "--json")
    assert json.loads(out[out.index("{"):])["hit"] is True
    code, out = invoke("engine", "list", "--cache", cache, "--json")
    listed = json.loads(out)
    assert [e["key"] for e in listed] == [built["key"]] and listed[0]["parts"]["backend"] == "onnxruntime"
    assert invoke("engine", "verify", "--cache", cache)[0] == 0
    Path(built["path"]).write_bytes(b"corrupt")
    code, out = invoke("engine", "verify", "--cache", cache)
    assert code == 1 and "BAD" in out
    code, out = invoke("engine", "clear", "--cache", cache, "--json")
    assert json.loads(out) == {"removed": 1}
    assert json.loads(invoke("engine", "list", "--cache", cache, "--json")[1]) == []


def test_tune_prints_exact_commands_without_tools() -> None:
    code, out = invoke("tune", "--power-mode", "0", "--max-clocks", "--cpus", "2-3", "--dry-run", "--json")
    assert code == 0
    shells = [s["shell"] for s in json.loads(out)]
    assert shells == ["nvpmodel -m 0", "jetson_clocks", "edge-runtime serve --cpus 2,3"]
    assert parse_cpus("0-2,5") == [0, 1, 2, 5]
    assert plan(cpus=[1], pid=99)[0].command == ["taskset", "-a", "-c", "-p", "1", "99"]
    assert invoke("tune", "--cpus", "x")[0] != 0
    assert invoke("tune")[0] != 0


def test_profile_json(tiny_bundle: Path) -> None:
    code, out = invoke("profile", "--bundle", str(tiny_bundle), "--runs", "30", "--backend", "onnxruntime", "--json")
    assert code == 0, out
    data = json.loads(out[out.index("{"):])
    lat = data["latency"]
    assert lat["runs"] == 30 and 0 < lat["p50_ms"] <= lat["p99_ms"] and data["peak_rss_mb"] > 0
