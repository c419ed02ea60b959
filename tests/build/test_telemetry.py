"""Fleet telemetry (fleet/telemetry.py): a report's checks and metrics, and the round trip through a real
pushgateway and a real Prometheus scraping it (Debian's packages, on loopback, stopped by PID)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from edge_deploy.fleet import FleetError
from edge_deploy.fleet import telemetry as t
from edge_deploy.simulation import pull
from edge_deploy.simulation.processes import free_port, terminate
from tests.support import need_tool

NOW = 1_796_000_000.0
REPORT = t.RobotReport(
    robot="site-a-robot-1",
    version="0.2.0",
    channel="stable",
    healthy=True,
    last_result="updated",
    engine_state="hit",
    last_check=NOW,
    bucket=17,
)


def test_a_report_becomes_the_four_documented_metrics() -> None:
    text = generate_latest(t.report_registry(REPORT)).decode()
    assert (
        'edge_robot_info{channel="stable",engine_state="hit",last_result="updated",version="0.2.0"} 1.0'
        in text
    )
    assert 'edge_robot_healthy{channel="stable"} 1.0' in text
    assert 'edge_robot_last_check_timestamp_seconds{channel="stable"} 1.796e+09' in text
    assert 'edge_robot_bucket{channel="stable"} 17.0' in text
    none = generate_latest(t.report_registry(replace(REPORT, version=None, healthy=False))).decode()
    assert 'version=""' in none and 'edge_robot_healthy{channel="stable"} 0.0' in none


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("robot", "../etc", "robot name"),
        ("robot", "a b", "robot name"),
        ("channel", 'x"} 1\nedge_robot_info{', "channel"),
        ("version", "1.0 ; rm", "version"),
        ("last_result", "x" * 200, "last_result"),
        ("bucket", 100, "bucket"),
        ("bucket", -1, "bucket"),
        ("last_check", float("nan"), "last_check"),
    ],
)
def test_a_report_with_a_value_that_is_not_plain_is_refused_before_it_leaves(
    field: str, value: object, words: str
) -> None:
    with pytest.raises(FleetError, match=words):
        t.check_report(replace(REPORT, **{field: value}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["file:///tmp/x", "127.0.0.1:9091", "http://", "http://h:9091/?a=b", "http://h:0x"]
)
def test_a_gateway_or_prometheus_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(FleetError, match="pushgateway URL"):
        t.push_report(url, REPORT)
    with pytest.raises(FleetError, match="Prometheus URL"):
        t.read_fleet(url)


def test_an_unreachable_gateway_or_prometheus_is_one_sentence() -> None:
    port = free_port(16300, set())  # nothing listens there
    with pytest.raises(FleetError, match=r"Could not push site-a-robot-1's report to the pushgateway"):
        t.push_report(f"http://127.0.0.1:{port}", REPORT)
    with pytest.raises(FleetError, match="Could not read the fleet's telemetry from Prometheus"):
        t.read_fleet(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def telemetry_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A pushgateway and a Prometheus scraping it every second, as the pull-mode simulation starts them."""
    need_tool("prometheus-pushgateway")
    need_tool("prometheus")
    control: Path = tmp_path_factory.mktemp("control")
    taken: set[int] = set()
    gw_port, prom_port = free_port(16310, taken), free_port(16310, taken)
    gw_pid, gateway = pull.start_pushgateway(control, gw_port)
    try:
        prom_pid, prometheus = pull.start_prometheus(control, prom_port, gw_port, scrape_interval_s=1)
        try:
            yield gateway, prometheus
        finally:
            terminate(prom_pid, str(control / "prometheus.yml"))
    finally:
        terminate(gw_pid, str(control / "pushgateway.data"))


def _eventually(
    read: Callable[[], dict[str, t.RobotReport]], want: dict[str, t.RobotReport], timeout: float = 20
) -> dict[str, t.RobotReport]:
    deadline = time.monotonic() + timeout
    got: dict[str, t.RobotReport] = {}
    while time.monotonic() < deadline:
        got = read()
        if got == want:
            return got
        time.sleep(0.5)
    return got


@pytest.mark.slow
def test_reports_pushed_by_robots_come_back_from_the_gateway_and_from_prometheus(
    telemetry_stack: tuple[str, str],
) -> None:
    gateway, prometheus = telemetry_stack
    second = replace(REPORT, robot="site-a-robot-2", version=None, healthy=False, last_result="", bucket=83)
    other = replace(REPORT, robot="site-b-robot-1", channel="beta", engine_state="built", bucket=5)
    for report in (REPORT, second, other):
        t.push_report(gateway, report)
    everyone = {r.robot: r for r in (REPORT, second, other)}
    assert t.read_gateway(gateway) == everyone
    assert t.read_gateway(gateway, channel="beta") == {"site-b-robot-1": other}
    assert _eventually(lambda: t.read_fleet(prometheus), everyone) == everyone
    assert t.read_fleet(prometheus, channel="stable") == {r.robot: r for r in (REPORT, second)}


@pytest.mark.slow
def test_a_new_report_replaces_the_robots_last_one_and_a_deleted_robot_leaves(
    telemetry_stack: tuple[str, str],
) -> None:
    gateway, prometheus = telemetry_stack
    robot = replace(REPORT, robot="site-c-robot-1", channel="gamma")
    t.push_report(gateway, robot)
    newer = replace(robot, version="0.3.0", last_result="rolled_back", healthy=True, last_check=NOW + 60)
    t.push_report(gateway, newer)
    assert t.read_gateway(gateway, channel="gamma") == {"site-c-robot-1": newer}  # one series per robot
    want = {"site-c-robot-1": newer}
    assert _eventually(lambda: t.read_fleet(prometheus, channel="gamma"), want) == want
    t.delete_report(gateway, "site-c-robot-1")
    assert t.read_gateway(gateway, channel="gamma") == {}
    assert _eventually(lambda: t.read_fleet(prometheus, channel="gamma"), {}) == {}


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "edge-fleet.json"


def _dashboard_queries() -> list[str]:
    import json

    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_the_grafana_dashboard_queries_only_documented_metrics() -> None:
    import json

    doc = json.loads(DASHBOARD.read_text())
    assert doc["__inputs"][0]["pluginId"] == "prometheus"
    queries = _dashboard_queries()
    assert len(queries) >= 7
    for expr in queries:
        named = {
            word
            for word in expr.replace("(", " ").replace("{", " ").split()
            if word.startswith("edge_robot_")
        }
        assert named and named <= set(t.METRICS), expr


@pytest.mark.slow
def test_the_grafana_dashboard_queries_run_on_prometheus_and_see_the_robots(
    telemetry_stack: tuple[str, str],
) -> None:
    import httpx

    gateway, prometheus = telemetry_stack
    robot = replace(REPORT, robot="site-d-robot-1", channel="delta", last_check=time.time())
    t.push_report(gateway, robot)
    want = {"site-d-robot-1": robot}
    assert _eventually(lambda: t.read_fleet(prometheus, channel="delta"), want) == want
    for expr in _dashboard_queries():
        body = httpx.get(
            f"{prometheus}/api/v1/query", params={"query": expr.replace("$channel", "delta")}, timeout=10
        ).json()
        assert body["status"] == "success", (expr, body)
        assert body["data"]["result"], f"{expr} sees no robot"


@pytest.mark.slow
def test_a_pull_mode_simulation_starts_its_control_plane_on_loopback_and_stops_it_by_pid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``fleet sim start --mode pull`` (robots without engines here): a site cache, a pushgateway and a
    Prometheus on 127.0.0.1, a report travelling through them, and ``sim stop`` ending each by its PID."""
    import json
    import os

    from edge_deploy.simulation.state import Simulation
    from tests.build.cli_helpers import run_cli
    from tests.support import need

    need(os.geteuid() == 0, "root (simulated robots are users with their own sshd)")
    for tool in ("ssh-keygen", "docker-registry", "prometheus", "prometheus-pushgateway"):
        need_tool(tool)
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="edge-tpull-", dir="/var/tmp"))  # robot users enter it
    os.chmod(root, 0o755)
    args = ["--name", "tpull", "--state-root", str(root)]
    code, out, err = run_cli(
        capsys, "fleet", "sim", "start", "--robots", "1", "--no-engines", "--mode", "pull", *args, "--json"
    )
    try:
        assert code == 0, err
        pull_state = json.loads(out)["pull"]
        for key in ("site_cache", "pushgateway", "prometheus"):
            assert str(pull_state[key]).replace("http://", "").startswith("127.0.0.1:"), pull_state
        sim = Simulation.load("tpull", root)
        assert sim.mode == "pull" and pull.pull_status(sim)["prometheus_up"]
        report = replace(REPORT, robot="tpull-robot-1", channel="tp", last_check=time.time())
        t.push_report(pull_state["pushgateway"], report)
        want = {"tpull-robot-1": report}
        assert _eventually(lambda: t.read_fleet(pull_state["prometheus"], channel="tp"), want) == want
    finally:
        code, _, err = run_cli(capsys, "fleet", "sim", "stop", *args, "--purge")
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, err
    for pid in (pull_state["site_pid"], pull_state["pushgateway_pid"], pull_state["prometheus_pid"]):
        assert not Path(f"/proc/{pid}").exists() or "tpull" not in Path(f"/proc/{pid}/cmdline").read_text()


def test_a_pull_wave_lists_every_robot_it_settled_whichever_read_settled_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Telemetry read by read: robot a turns up on the release in the first read, b only in the second;
    the wave's robots are both (the e2e's staged rollout showed only the last read's robots before)."""
    from edge_deploy.fleet import pull as pull_rollout

    published = NOW
    old = replace(REPORT, version="0.9.0", last_check=NOW + 1)
    on = replace(REPORT, version="1.0.0", last_check=NOW + 2)
    reads = iter(
        [
            {"a": replace(on, robot="a"), "b": replace(old, robot="b")},
            {"a": replace(on, robot="a"), "b": replace(on, robot="b")},
        ]
    )
    monkeypatch.setattr(pull_rollout, "read_reports", lambda _opts: next(reads))
    opts = pull_rollout.PullRolloutOptions(
        version="1.0.0", sign_key=Path("k"), public_key=Path("k.pub"), pushgateway="http://127.0.0.1:1"
    )
    settled: dict[str, pull_rollout.PullRobot] = {}
    wave = pull_rollout._wait_wave(
        opts, "1.0.0", 100, published, settled, 1, lambda *_: None, lambda _s: None
    )
    assert sorted(wave) == ["a", "b"]
    assert {name: (r.outcome, r.wave) for name, r in settled.items()} == {
        "a": ("updated", 1),
        "b": ("updated", 1),
    }
