"""The fleet commands as a user meets them: a malformed fleet.yaml is one `error:` line, never a traceback;
a dry run prints the waves without touching a robot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_deploy.release.manifest import ReleaseImage, ReleaseManifest, save_release


def edge_deploy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_deploy", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_malformed_fleet_yaml_is_one_clear_sentence(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "robots:\n  - name: arm-1\n    host: 10.0.0.1\n    jetson_model: tx2\n"
    )
    p = edge_deploy("fleet", "status", "--fleet", "fleet.yaml", cwd=tmp_path)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "'arm-1'" in lines[0] and "jetson_model" in lines[0] and "Traceback" not in p.stderr


def test_dry_run_prints_waves(tmp_path: Path) -> None:
    (tmp_path / "kh").write_text("")
    (tmp_path / "fleet.yaml").write_text(
        "defaults: {known_hosts: kh, port: 1}\nrobots:\n"
        + "".join(f"  - {{name: r{i}, host: 10.9.9.{i}}}\n" for i in range(1, 5))
    )
    save_release(
        ReleaseManifest(
            "0.1.0",
            "abc",
            "2026-01-01T00:00:00Z",
            {"runtime": ReleaseImage("localhost:5000/edge/runtime", "sha256:" + "c" * 64)},
            "d" * 64,
            "fp16",
            "standin",
        ),
        tmp_path / "releases",
    )
    p = edge_deploy(
        "fleet",
        "rollout",
        "0.1.0",
        "--fleet",
        "fleet.yaml",
        "--canary",
        "1",
        "--wave-size",
        "2",
        "--dry-run",
        "--json",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["dry_run"] and out["waves"] == [["r1"], ["r2", "r3"], ["r4"]]
    assert {r["outcome"] for r in out["robots"]} == {"planned"}


def test_tag_only_release_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kh").write_text("")
    (tmp_path / "fleet.yaml").write_text(
        "defaults: {known_hosts: kh}\nrobots: [{name: r1, host: 10.9.9.1}]\n"
    )
    save_release(
        ReleaseManifest(
            "0.1.0",
            "abc",
            "2026-01-01T00:00:00Z",
            {"runtime": ReleaseImage("localhost:5000/edge/runtime", "latest")},
            "d" * 64,
            "fp16",
            "standin",
        ),
        tmp_path / "releases",
    )
    p = edge_deploy("fleet", "rollout", "0.1.0", "--fleet", "fleet.yaml", cwd=tmp_path)
    assert p.returncode != 0 and "does not pin its runtime image by digest" in p.stderr


def test_status_table_never_cuts_names_on_80_columns(tmp_path: Path) -> None:
    """Robots that refuse connections are real rows (health "unreachable" with the reason): on an 80-column
    terminal nothing is cut with an ellipsis; the digest column appears where there is room for it."""
    import os
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])  # closed once the socket is: connections are refused
    (tmp_path / "known_hosts").write_text("")
    robots = "".join(
        f"  - name: warehouse-arm-{i:02d}\n    host: 127.0.0.1\n    port: {port}\n"
        f"    known_hosts: {tmp_path / 'known_hosts'}\n    connect_timeout_s: 2\n"
        for i, port in enumerate(ports)
    )
    (tmp_path / "fleet.yaml").write_text("robots:\n" + robots)
    for columns, digest in (("80", False), ("120", True)):
        p = subprocess.run(
            [sys.executable, "-m", "edge_deploy", "fleet", "status", "--fleet", "fleet.yaml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": columns},
        )
        assert p.returncode == 0, p.stderr
        assert "…" not in p.stdout and max(len(line) for line in p.stdout.splitlines()) <= int(columns)
        assert "warehouse-arm-00" in p.stdout and "warehouse-arm-01" in p.stdout and "unreachable" in p.stdout
        assert ("digest" in p.stdout) is digest, p.stdout
