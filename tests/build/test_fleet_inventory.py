"""fleet.yaml validation: good files load into dataclasses; each mistake is one sentence naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import dump_fleet, load_fleet


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "id_ed25519").write_text("key")
    (tmp_path / "known_hosts").write_text("")
    p = tmp_path / "fleet.yaml"
    p.write_text(text)
    return p


GOOD = """
fleet: lab
defaults:
  user: robot
  ssh_key: id_ed25519
  known_hosts: known_hosts
  jetson_model: orin_nx
  groups: [main]
robots:
  - name: arm-1
    host: 10.0.0.11
    groups: [canary]
    labels: {site: lab}
  - name: arm-2
    host: 10.0.0.12
    port: 2222
    jetson_model: agx_orin
    compose_dir: /opt/edge
    service_port: 9090
"""


def test_good_inventory_loads_with_defaults_and_overrides(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, GOOD))
    a, b = fleet.robots
    assert fleet.name == "lab"
    assert (a.user, a.port, a.jetson_model, a.groups) == ("robot", 22, "orin_nx", ("canary",))
    assert a.ssh_key == tmp_path.resolve() / "id_ed25519"
    assert a.labels == {"site": "lab"}
    assert (b.port, b.jetson_model, b.compose_dir, b.service_port, b.groups) == (
        2222,
        "agx_orin",
        "/opt/edge",
        9090,
        ("main",),
    )
    assert [r.name for r in fleet.select(group="main")] == ["arm-2"]
    assert [r.name for r in fleet.select(devices=["arm-1"])] == ["arm-1"]


def test_dump_round_trips(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, GOOD))
    again = tmp_path / "again.yaml"
    again.write_text(dump_fleet(fleet))
    assert load_fleet(again).robots == fleet.robots


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("robots: [{name: r1, host: h, jetson_model: orin_mega}]", ["'r1'", "jetson_model", "orin_mega"]),
        ("robots: [{name: r1, host: h, port: 70000}]", ["'r1'", "'port'", "70000"]),
        ("robots: [{name: r1, host: h, port: '22'}]", ["'r1'", "'port'"]),
        ("robots: [{name: r1, host: h, ssh_key: nope}]", ["'r1'", "ssh_key", "does not exist"]),
        ("robots: [{name: r1, host: h, colour: red}]", ["'r1'", "unknown field 'colour'"]),
        ("robots: [{name: r1}]", ["'r1'", "'host'"]),
        ("robots: [{host: h}]", ["robot #1", "'name'"]),
        ("robots: [{name: r1, host: h}, {name: r1, host: g}]", ["'r1'", "twice"]),
        ("robots: [{name: r1, host: h}, {name: r2, host: h}]", ["'r2'", "same host and port", "'r1'"]),
        ("robots: [{name: r1, host: h, compose_dir: ../etc}]", ["'r1'", "compose_dir"]),
        ("robots: [{name: r1, host: h, gpu: maybe}]", ["'r1'", "'gpu'"]),
        (
            "robots: [{name: r1, host: h, allow_cpu_fallback: 1}]",
            ["'r1'", "'allow_cpu_fallback'", "true or false"],
        ),
        (
            "robots: [{name: r1, host: h, health_start_interval_s: 0}]",
            ["'r1'", "health_start_interval_s", "0.1"],
        ),
        ("robots: []", ["'robots'", "non-empty"]),
        ("defaults: {name: x}\nrobots: [{name: r1, host: h}]", ["'defaults'", "'name'"]),
        ("robots:\n  - name: r1\n   host: h", ["not valid YAML", "line"]),
        ("- just\n- a list", ["mapping"]),
    ],
)
def test_malformed_inventory_is_one_sentence(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FleetError) as info:
        load_fleet(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith(".")
    assert str(path) in msg or "fleet" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_file_and_unknown_group(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="does not exist"):
        load_fleet(tmp_path / "nope.yaml")
    fleet = load_fleet(write(tmp_path, GOOD))
    with pytest.raises(FleetError, match="group 'night'"):
        fleet.select(group="night")
    with pytest.raises(FleetError, match="'arm-9' is not in the fleet"):
        fleet.select(devices=["arm-9"])


def test_gpu_robots_must_serve_tensorrt_unless_the_fallback_is_allowed(tmp_path: Path) -> None:
    """``gpu`` defaults to true (a Jetson) and ``allow_cpu_fallback`` to false; both can be shared in
    ``defaults`` and overridden per robot, and survive a dump."""
    text = """
defaults: {allow_cpu_fallback: true}
robots:
  - {name: lab-1, host: 10.0.0.1}
  - {name: lab-2, host: 10.0.0.2, allow_cpu_fallback: false}
  - {name: sim-1, host: 10.0.0.3, gpu: false}
"""
    fleet = load_fleet(write(tmp_path, text))
    assert [(r.gpu, r.allow_cpu_fallback) for r in fleet.robots] == [
        (True, True),
        (True, False),
        (False, True),
    ]
    again = tmp_path / "again.yaml"
    again.write_text(dump_fleet(fleet))
    assert load_fleet(again).robots == fleet.robots
    plain = load_fleet(write(tmp_path, "robots: [{name: r1, host: h}]")).robots[0]
    assert (plain.gpu, plain.allow_cpu_fallback) == (True, False)
