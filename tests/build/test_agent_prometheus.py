"""Pull mode's status and history read from a real Prometheus (the Debian package scripts/host-setup
installs) that scrapes a real pushgateway, as a site runs them: reports pushed the way agents push them
come back through Prometheus's HTTP API, and a robot's history is the list of its reports' changes."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_deploy.fleet.pull import pull_history, pull_status
from edge_deploy.fleet.telemetry import RobotReport, push_report
from tests.build.cli_helpers import run_cli
from tests.support import need

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str) -> None:
    for _ in range(300):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not turn ready")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(pushgateway URL, Prometheus URL): Prometheus scrapes the gateway every second, labels kept."""
    gw_bin, prom_bin = shutil.which("prometheus-pushgateway"), shutil.which("prometheus")
    need(
        gw_bin is not None and prom_bin is not None,
        "prometheus and prometheus-pushgateway (scripts/host-setup)",
    )
    assert gw_bin is not None and prom_bin is not None
    root = tmp_path_factory.mktemp("prom")
    gw_port, prom_port = free_port(), free_port()
    (root / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]\n"
    )
    procs = [
        subprocess.Popen(
            [gw_bin, f"--web.listen-address=127.0.0.1:{gw_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                prom_bin,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    gw, prom = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}"
    try:
        wait_ready(f"{gw}/-/ready")
        wait_ready(f"{prom}/-/ready")
        time.sleep(0.5)
        # Ours serve these ports: one that lost its bind to another process has exited by now.
        assert all(p.poll() is None for p in procs), "a port picked for the gateway or Prometheus was taken"
        yield gw, prom
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)


def report(version: str | None, result: str, healthy: bool = True) -> RobotReport:
    return RobotReport("arm-7", version, "stable", healthy, result, "ready", time.time(), 41)


def wait_for(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError("Prometheus did not show the report in time")


def test_status_and_history_come_back_through_prometheus(
    site: tuple[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gw, prom = site
    steps = [report("0.1.0", "updated"), report("0.1.0", "rolled_back"), report("0.2.0", "updated")]
    for r in steps:
        push_report(gw, r)
        wait_for(
            lambda r=r: (
                [(s["version"], s["last_result"]) for s in pull_status(prometheus=prom)]
                == [(r.version, r.last_result)]
            )
        )
        time.sleep(2)  # a few scrapes of each state
    (row,) = pull_status(prometheus=prom, channel="stable")
    assert (row["robot"], row["version"], row["healthy"], row["bucket"], row["engine_state"]) == (
        "arm-7",
        "0.2.0",
        True,
        41,
        "ready",
    )
    assert pull_status(prometheus=prom, channel="beta") == []
    history = pull_history(prom, "arm-7", hours=1, step_s=1)
    assert [(h["version"], h["result"]) for h in history] == [
        ("0.1.0", "updated"),
        ("0.1.0", "rolled_back"),
        ("0.2.0", "updated"),
    ]
    code, out, err = run_cli(
        capsys,
        "fleet",
        "history",
        "--mode",
        "pull",
        "--prometheus",
        prom,
        "--device",
        "arm-7",
        "--hours",
        "1",
    )
    assert code == 0, err
    assert [line.split()[2:4] for line in out.splitlines()][-1] == ["0.2.0", "updated"]
    code, out, err = run_cli(capsys, "fleet", "status", "--mode", "pull", "--prometheus", prom, "--json")
    assert code == 0 and [r["version"] for r in json.loads(out)] == ["0.2.0"], err
