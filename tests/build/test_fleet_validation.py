"""Every inventory value that reaches a robot's shell, a path on the robot or its systemd unit is checked
before any robot is touched, whether it comes from fleet.yaml or from Python (``Robot(...)``), and each
bad value is one sentence naming the robot and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot, load_fleet


def write(tmp_path: Path, text: str | bytes) -> Path:
    (tmp_path / "known_hosts").write_text("")
    p = tmp_path / "fleet.yaml"
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def one_robot(field: str, value: str) -> str:
    """fleet.yaml with robot r1 whose ``field`` is the YAML text ``value``."""
    return f"robots:\n  - name: r1\n    host: 10.0.0.1\n    {field}: {value}\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # The heredoc that installed the systemd unit ended at a line "EOF": the rest ran as root.
        ("compose_dir", '"edge\\nEOF\\ntouch /tmp/pwned\\n"'),
        ("compose_dir", '"edge$(reboot)"'),
        ("compose_dir", '"edge;reboot"'),
        ("compose_dir", '"`id`"'),
        ("compose_dir", '"-rf"'),
        ("compose_dir", '"edge dir"'),
        ("compose_dir", '"/opt/../etc"'),
        ("compose_dir", '"~root/edge"'),
        ("host", '"10.0.0.1;id"'),
        ("host", '"-oProxyCommand=id"'),
        ("host", '"10.0.0.1\\n"'),
        ("user", '"robot\\n"'),
        ("user", '"robot;id"'),
        ("groups", '["canary\\nEOF"]'),
        ("groups", '["a b"]'),
        ("labels", '{site: "lab\\nEOF"}'),
        ("labels", '{"site;id": lab}'),
        ("labels", "{site: [a, b]}"),
        ("lock_wait_s", ".nan"),
        ("lock_wait_s", ".inf"),
        ("connect_timeout_s", "0"),
        ("connect_timeout_s", ".inf"),
    ],
)
def test_values_that_reach_a_robot_are_refused(tmp_path: Path, field: str, value: str) -> None:
    path = write(tmp_path, one_robot(field, value))
    with pytest.raises(FleetError) as info:
        load_fleet(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith("."), msg
    assert str(path) in msg and "'r1'" in msg and f"'{field}'" in msg, msg


@pytest.mark.parametrize(
    "text",
    [
        'robots:\n  - name: "r1\\n"\n    host: h\n',  # a newline after an otherwise good name
        'fleet: "lab\\n"\nrobots:\n  - name: r1\n    host: h\n',
    ],
)
def test_names_with_a_trailing_newline_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(FleetError, match="name"):
        load_fleet(write(tmp_path, text))


def test_good_values_load(tmp_path: Path) -> None:
    text = (
        "robots:\n"
        "  - {name: r1, host: arm-1.lab.example, user: robot_1, compose_dir: ~/edge/prod,"
        " labels: {site: lab-b, rack: 3, app.kubernetes.io/part-of: edge}, groups: [canary, hall.2]}\n"
        "  - {name: r2, host: 'fe80::1', compose_dir: /opt/edge-deploy/v1, lock_wait_s: 0,"
        " connect_timeout_s: 2.5}\n"
        "  - {name: r3, host: 10.0.0.3, user: deploy}\n"
    )
    r1, r2, r3 = load_fleet(write(tmp_path, text)).robots
    assert (r1.compose_dir, r1.user, r1.groups) == ("edge/prod", "robot_1", ("canary", "hall.2"))
    assert r1.labels == {"site": "lab-b", "rack": "3", "app.kubernetes.io/part-of": "edge"}
    assert (r2.host, r2.compose_dir, r2.lock_wait_s, r2.connect_timeout_s) == (
        "fe80::1",
        "/opt/edge-deploy/v1",
        0.0,
        2.5,
    )
    assert r3.user == "deploy"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"compose_dir": "edge\nEOF\nreboot"}, "compose_dir"),
        ({"user": "robot; reboot"}, "user"),
        ({"host": "h;reboot"}, "host"),
        ({"labels": {"site": "a\nb"}}, "labels"),
        ({"port": 0}, "port"),
        ({"service_port": 70000}, "service_port"),
        ({"lock_wait_s": float("nan")}, "lock_wait_s"),
    ],
)
def test_robots_made_in_python_are_checked_too(kw: dict, field: str) -> None:
    """``edge_deploy.api.deploy_to_device`` builds a Robot from a dict, without a fleet.yaml."""
    with pytest.raises(FleetError) as info:
        Robot(**{"name": "r1", "host": "10.0.0.1", **kw})
    msg = str(info.value)
    assert "\n" not in msg and f"'{field}'" in msg and "'r1'" in msg, msg


def test_non_utf8_fleet_yaml_is_one_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, b"robots:\n  - name: r\xe9\n    host: h\n")
    with pytest.raises(FleetError) as info:
        load_fleet(path)
    msg = str(info.value)
    assert str(path) in msg and "UTF-8" in msg and "\n" not in msg, msg
