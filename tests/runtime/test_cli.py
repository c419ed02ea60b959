from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_runtime.cli import cli
from edge_runtime.tune import parse_cpus, plan


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def test_engine_build_list_verify_clear(tiny_bundle: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    build = (
        "engine",
        "build",
        "--bundle",
        str(tiny_bundle),
        "--cache",
        cache,
        "--backend",
        "onnxruntime",
        "--json",
    )
    code, out = invoke(*build)
    assert code == 0, out
    built = json.loads(out[out.index("{") :])
    assert built["hit"] is False
    code, out = invoke(*build)
    assert json.loads(out[out.index("{") :])["hit"] is True
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
    code, out = invoke(
        "profile", "--bundle", str(tiny_bundle), "--runs", "30", "--backend", "onnxruntime", "--json"
    )
    assert code == 0, out
    data = json.loads(out[out.index("{") :])
    lat = data["latency"]
    assert lat["runs"] == 30 and 0 < lat["p50_ms"] <= lat["p99_ms"] and data["peak_rss_mb"] > 0


def test_profile_samples_tegrastats_when_present(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = (
        "11-25-2026 07:51:16 RAM 1965/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,2%@729] "
        "GR3D_FREQ 40%@[624] cpu@46.25C gpu@45.031C VDD_IN 4451mW/4451mW VDD_SOC 1322mW/1322mW"
    )
    fake = tmp_path / "bin" / "tegrastats"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nwhile true; do echo '{line}'; sleep 0.05; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    code, out = invoke(
        "profile", "--bundle", str(tiny_bundle), "--runs", "20", "--backend", "onnxruntime", "--json"
    )
    assert code == 0, out
    data = json.loads(out[out.index("{") :])
    assert data["power_source"] == "tegrastats"
    assert data["tegrastats"]["power_max_mw"] == 4451 and data["tegrastats"]["gpu_load_mean_pct"] == 40


def test_tune_runs_the_tools_where_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.txt"
    for tool in ("nvpmodel", "jetson_clocks"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    code, out = invoke("tune", "--power-mode", "2", "--max-clocks", "--json")
    assert code == 0, out
    assert [s["ran"] for s in json.loads(out)] == [True, True]
    assert log.read_text().splitlines() == ["nvpmodel -m 2", "jetson_clocks "]
    (bindir / "nvpmodel").write_text("#!/bin/sh\necho 'NVPM ERROR: invalid mode' >&2\nexit 1\n")
    result = CliRunner().invoke(cli, ["tune", "--power-mode", "9"])
    assert result.exit_code != 0 and "exit code 1" in str(result.exception)


def _build(bundle: Path, cache: str, *extra: str) -> dict:
    code, out = invoke(
        "engine",
        "build",
        "--bundle",
        str(bundle),
        "--cache",
        cache,
        "--backend",
        "onnxruntime",
        "--json",
        *extra,
    )
    assert code == 0, out
    return dict(json.loads(out[out.index("{") :]))


def test_engine_build_pin_then_prune_and_unpin(tmp_path: Path) -> None:
    """The rollout's pre-build pins each release's engine; its prune step keeps the releases the robot keeps."""
    from tests.runtime.conftest import write_tiny_bundle

    cache = str(tmp_path / "cache")
    old = _build(write_tiny_bundle(tmp_path / "b0", seed=0), cache, "--pin", "1.0.0")
    new = _build(write_tiny_bundle(tmp_path / "b1", seed=1), cache, "--pin", "1.1.0")
    assert (old["pin"], new["pin"]) == ("1.0.0", "1.1.0")
    code, out = invoke("engine", "pins", "--cache", cache, "--json")
    assert code == 0 and json.loads(out) == {"1.0.0": [old["key"]], "1.1.0": [new["key"]]}
    listed = {
        e["key"]: e["pins"] for e in json.loads(invoke("engine", "list", "--cache", cache, "--json")[1])
    }
    assert listed == {old["key"]: ["1.0.0"], new["key"]: ["1.1.0"]}
    code, out = invoke("engine", "pins", "--cache", cache)
    assert code == 0 and f"1.0.0  {old['key'][:12]}" in out

    code, out = invoke(
        "engine", "prune", "--cache", cache, "--keep", "1.1.0", "--keep-unpinned", "0", "--json"
    )
    assert code == 0, out
    assert json.loads(out) == {"unpinned": ["1.0.0"], "evicted": [old["key"]], "kept": ["1.1.0"]}
    assert [e["key"] for e in json.loads(invoke("engine", "list", "--cache", cache, "--json")[1])] == [
        new["key"]
    ]
    code, out = invoke("engine", "unpin", "--cache", cache, "1.1.0")
    assert code == 0 and "unpinned 1.1.0" in out
    assert json.loads(invoke("engine", "pins", "--cache", cache, "--json")[1]) == {}


def test_engine_pin_reads_its_env_and_checks_the_name(tiny_bundle: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    r = CliRunner().invoke(
        cli,
        [
            "engine",
            "build",
            "--bundle",
            str(tiny_bundle),
            "--cache",
            cache,
            "--backend",
            "onnxruntime",
            "--json",
        ],
        env={"EDGE_ENGINE_PIN": "2.0.0-rc.1"},
    )
    assert r.exit_code == 0, r.output
    assert json.loads(invoke("engine", "pins", "--cache", cache, "--json")[1]) == {
        "2.0.0-rc.1": [json.loads(r.output[r.output.index("{") :])["key"]]
    }
    for bad in ("../x", "a b"):
        code, out = invoke("engine", "build", "--bundle", str(tiny_bundle), "--cache", cache, "--pin", bad)
        assert code == 2 and "is not a valid pin name" in out
        code, out = invoke("engine", "prune", "--cache", cache, "--keep", bad)
        assert code == 2 and "is not a valid pin name" in out


def test_engine_quarantine_lists_records(tiny_bundle: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    built = _build(tiny_bundle, cache)
    Path(built["path"]).write_bytes(b"corrupt")
    assert invoke("engine", "verify", "--cache", cache, "--quarantine")[0] == 1
    code, out = invoke("engine", "quarantine", "--cache", cache, "--json")
    assert code == 0
    (record,) = json.loads(out)
    assert record["key"] == built["key"] and record["count"] == 1 and "truncated" in record["reason"]
    code, out = invoke("engine", "quarantine", "--cache", cache)
    assert code == 0 and built["key"][:12] in out and "truncated" in out
