"""The rollout's engine pre-build pins the release's engine, and its prune step drops the pins of releases the
robot no longer keeps: the robot's commands run against the real ``edge-runtime engine`` CLI.

The robot is tests/build/local_robot.py's (a real ``sh``); its ``docker`` is replaced by a script that runs
``docker compose run ... --entrypoint edge-runtime <service> ARGS`` as ``python -m edge_runtime ARGS`` with the
``-e`` variables, the bundle of the release directory it runs in, and one shared engine-cache directory (the
volume).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from edge_deploy.fleet.deploy import RobotReleases
from edge_deploy.fleet.inventory import Robot
from edge_runtime.cache import EngineCache
from tests.build.local_robot import LocalRobot
from tests.runtime.conftest import write_tiny_bundle

REPO = Path(__file__).resolve().parents[2]

DOCKER = r'''#!PYTHON
"""docker compose run ... --entrypoint edge-runtime SERVICE ARGS → python -m edge_runtime ARGS (real CLI)."""
import os, sys
args = sys.argv[1:]
if args[:1] != ["compose"] or "run" not in args:
    sys.exit(0)
env = dict(os.environ)
i = args.index("run") + 1
while args[i] != "--entrypoint":
    if args[i] == "-e":
        name, _, value = args[i + 1].partition("=")
        env[name] = value
        i += 2
    else:
        i += 1
rest = args[i + 3:]  # after --entrypoint edge-runtime SERVICE
env["EDGE_BUNDLE"] = open("bundle-path").read().strip()  # the release's own image holds its bundle
os.execve(sys.executable, [sys.executable, "-m", "edge_runtime", *rest], env)
'''


def test_prebuild_pins_each_release_and_prune_keeps_the_kept_ones(tmp_path: Path) -> None:
    robot = Robot(name="arm-1", host="127.0.0.1", compose_dir="edge", lock_wait_s=5)
    lr = LocalRobot(robot, tmp_path, {})
    docker = lr.stubs / "docker"
    docker.write_text(DOCKER.replace("PYTHON", sys.executable))
    cache = tmp_path / "volume"
    lr.env.update(
        EDGE_CACHE=str(cache),
        EDGE_BACKEND="onnxruntime",
        PYTHONPATH=os.pathsep.join([str(REPO / "runtime"), str(REPO)]),
    )
    releases = RobotReleases(lr)
    keys = {}
    for seed, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        release = lr.file(f"edge/releases/{version}")
        release.mkdir(parents=True)
        bundle = write_tiny_bundle(tmp_path / "bundles" / version, seed=seed)
        (release / "bundle-path").write_text(str(bundle))
        built = asyncio.run(releases.prebuild_engine(version, timeout_s=120))
        assert built["hit"] is False and built["pin"] == version, built
        keys[version] = built["key"]
    assert EngineCache(cache).pins() == {v: [k] for v, k in keys.items()}

    asyncio.run(releases.prune_engines("1.2.0", {"1.2.0", "1.1.0"}))
    assert EngineCache(cache).pins() == {v: [keys[v]] for v in ("1.1.0", "1.2.0")}
    prune_runs = [c for c in lr.commands if " engine prune " in c]
    assert len(prune_runs) == 1 and "--keep 1.1.0 --keep 1.2.0 --json" in prune_runs[0]


def test_a_failing_prune_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An image older than pins has no ``engine prune``: the deploy is done, the failure is logged."""
    robot = Robot(name="arm-1", host="127.0.0.1", compose_dir="edge", lock_wait_s=5)
    lr = LocalRobot(robot, tmp_path, {"prebuild": [[2, "", "Error: No such command 'prune'.\n"]]})
    lr.file("edge/releases/1.0.0").mkdir(parents=True)
    asyncio.run(RobotReleases(lr).prune_engines("1.0.0", {"1.0.0"}))
    assert "dropping engine pins failed (exit 2)" in caplog.text
