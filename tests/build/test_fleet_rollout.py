"""Wave planning, the failure budget and the bundle written for a robot (pure logic, plus robots that
refuse connections so that failures are real)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.compose import bundle_files, env_file
from edge_deploy.fleet.inventory import Fleet, Robot
from edge_deploy.fleet.options import DeployRequest, RolloutOptions
from edge_deploy.fleet.plan import plan_waves
from edge_deploy.fleet.rollout import Rollout


def robots(n: int, tmp_path: Path | None = None, port: int = 22) -> list[Robot]:
    kh = None
    if tmp_path is not None:
        kh = tmp_path / "known_hosts"
        kh.write_text("")
    return [
        Robot(name=f"r{i}", host="127.0.0.1", port=port + i, known_hosts=kh, connect_timeout_s=2)
        for i in range(n)
    ]


def names(waves: list[list[Robot]]) -> list[list[str]]:
    return [[r.name for r in w] for w in waves]


def test_plan_waves() -> None:
    rs = robots(7)
    assert names(plan_waves(rs)) == [[r.name for r in rs]]
    assert names(plan_waves(rs, canary=1, wave_size=3)) == [["r0"], ["r1", "r2", "r3"], ["r4", "r5", "r6"]]
    assert names(plan_waves(rs, wave_percent=50)) == [["r0", "r1", "r2", "r3"], ["r4", "r5", "r6"]]
    assert names(plan_waves(rs, canary=2, wave_percent=20)) == [
        ["r0", "r1"],
        ["r2", "r3"],
        ["r4", "r5"],
        ["r6"],
    ]
    assert names(plan_waves(rs[:1], canary=3)) == [["r0"]]
    flat = [r for w in plan_waves(rs, canary=1, wave_size=2) for r in w]
    assert flat == rs  # every robot exactly once, in inventory order
    with pytest.raises(FleetError):
        plan_waves(rs, wave_size=2, wave_percent=10)
    with pytest.raises(FleetError):
        plan_waves(rs, wave_size=0)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def req() -> DeployRequest:
    return DeployRequest("0.1.0", "localhost:5000/x@sha256:" + "a" * 64)


def run(rollout: Rollout) -> dict:
    return asyncio.run(rollout.run()).to_dict()


def opts(**kw: Any) -> RolloutOptions:
    return RolloutOptions(version="0.1.0", **kw)


def unreachable_robots(tmp_path: Path, n: int) -> list[Robot]:
    """Robots on closed loopback ports: every connection is refused at once."""
    (tmp_path / "kh").write_text("")
    return [
        Robot(
            name=f"r{i}",
            host="127.0.0.1",
            port=closed_port(),
            known_hosts=tmp_path / "kh",
            connect_timeout_s=2,
        )
        for i in range(n)
    ]


def test_canary_failure_stops_the_fleet(tmp_path: Path) -> None:
    rs = unreachable_robots(tmp_path, 4)
    out = run(Rollout(rs, req(), opts(canary=1, max_failures=5)))
    outcomes = [r["outcome"] for r in out["robots"]]
    assert outcomes == ["unreachable", "not_reached", "not_reached", "not_reached"]
    assert out["stopped"] and "canary" in out["stop_reason"] and not out["ok"]


def test_max_failures_budget(tmp_path: Path) -> None:
    rs = unreachable_robots(tmp_path, 4)
    out = run(Rollout(rs, req(), opts(wave_size=1, max_failures=1)))
    assert [r["outcome"] for r in out["robots"]] == [
        "unreachable",
        "unreachable",
        "not_reached",
        "not_reached",
    ]
    assert out["failures"] == 2 and out["stopped"]
    assert all("connect" in r["stage"] for r in out["robots"][:2])


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    rs = robots(3, tmp_path, port=closed_port())
    out = run(Rollout(rs, req(), opts(canary=1, wave_size=1, dry_run=True)))
    assert [r["outcome"] for r in out["robots"]] == ["planned"] * 3
    assert out["waves"] == [["r0"], ["r1"], ["r2"]]
    assert all(r["timings"] == {} for r in out["robots"])


def test_missing_known_hosts_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = Robot(name="r0", host="127.0.0.1", port=closed_port(), known_hosts=None)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts to fall back on
    out = run(Rollout([r], req(), opts()))
    assert out["robots"][0]["outcome"] == "refused"
    assert "known_hosts" in out["robots"][0]["reason"]


@contextlib.asynccontextmanager
async def sshd_on_loopback(host_key: Any) -> AsyncIterator[int]:
    """An SSH server on 127.0.0.1 (asyncssh, in this process) with ``host_key``; its port. No login ever
    succeeds: the host key check comes first, and that is what is under test."""
    import asyncssh

    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[host_key], password_auth=False)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("known", ["another key", "another host"])
def test_an_unknown_or_changed_host_key_is_refused_before_login(tmp_path: Path, known: str) -> None:
    """A robot whose SSH host key differs from its known_hosts entry (a changed key), or that known_hosts
    does not list (an unknown host), is refused at once, never retried, and the rollout names it."""
    import asyncssh

    served, other = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    kh = tmp_path / "known_hosts"

    async def go() -> dict:
        async with sshd_on_loopback(served) as port:
            listed = f"[127.0.0.1]:{port}" if known == "another key" else "[192.0.2.1]:22"
            entry_key = other if known == "another key" else served
            kh.write_text(f"{listed} {entry_key.export_public_key().decode().strip()}\n")
            robot = Robot(name="r0", host="127.0.0.1", port=port, known_hosts=kh, connect_timeout_s=5)
            return (await Rollout([robot], req(), opts()).run()).to_dict()

    (res,) = asyncio.run(go())["robots"]
    assert (res["outcome"], res["stage"]) == ("refused", "connect"), res
    assert "host key" in res["reason"] and "unknown or has changed" in res["reason"], res
    assert res["retries"] == {}  # a refused key is final, not a hiccup to retry


def test_env_and_bundle_for_simulated_and_jetson_robots() -> None:
    sim = Robot(name="s", host="h", gpu=False, service_port=18081, health_start_interval_s=5)
    jet = Robot(name="j", host="h", gpu=True)
    r = DeployRequest("0.2.0", "reg/rt@sha256:" + "b" * 64, include_ros2=True, ros_domain_id=7)
    env_sim = dict(
        line.split("=", 1)
        for line in env_file(sim, r).splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert env_sim["EDGE_IMAGE"] == r.image and env_sim["EDGE_PORT"] == "18081"
    assert env_sim["COMPOSE_FILE"] == "compose.yaml:compose.ros2.yaml"
    assert env_sim["EDGE_ROS2"] == "1" and env_sim["ROS_DOMAIN_ID"] == "7"
    assert env_sim["EDGE_HEALTH_START_INTERVAL"] == "5000ms"
    assert "EDGE_HEALTH_START_INTERVAL=1000ms" in env_file(jet, req())  # the default: a check a second
    assert "compose.jetson.yaml" in env_file(jet, req())
    files = bundle_files(sim, r)
    assert {"compose.yaml", "compose.jetson.yaml", "compose.ros2.yaml", ".env", "release.json"} <= set(files)
    assert json.loads(files["release.json"])["image"] == r.image


def test_compose_file_is_hardened() -> None:
    import yaml

    from edge_deploy.fleet.compose import compose_bundle_dir

    doc = yaml.safe_load((compose_bundle_dir() / "compose.yaml").read_text())
    svc = doc["services"]["edge-runtime"]
    assert svc["image"].startswith("${EDGE_IMAGE")
    assert svc["network_mode"] == "host" and svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"]
    assert svc["restart"] == "unless-stopped" and svc["healthcheck"]["test"][-1] == "edge_runtime.healthcheck"
    assert not str(svc["user"]).startswith("0") and svc["logging"]["driver"] == "json-file"
    assert "runtime" not in svc  # the NVIDIA runtime comes only from compose.jetson.yaml
    jet = yaml.safe_load((compose_bundle_dir() / "compose.jetson.yaml").read_text())
    assert jet["services"]["edge-runtime"]["runtime"] == "nvidia"


def _other_model_bundle(root: Path) -> Path:
    """A bundle that shares nothing with the sample policy: inputs ``scan`` FP32 [B,16] and ``mode`` INT64
    [B,1]; outputs ``cmd`` FP32 [B,2] and ``mode_echo`` INT64 [B,1]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.bundle import BatchProfile, BundleManifest, TensorSpec, sha256_file

    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["scan", "W", "B"], ["cmd"]),
            helper.make_node("Identity", ["mode"], ["mode_echo"]),
        ],
        "other",
        [
            helper.make_tensor_value_info("scan", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("mode", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("cmd", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("mode_echo", TensorProto.INT64, ["batch", 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2), "W"),
            numpy_helper.from_array(np.zeros(2, np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root.mkdir(parents=True)
    onnx.save(model, root / "model.onnx")
    manifest = BundleManifest(
        precision="fp32",
        opset=17,
        inputs=[TensorSpec("scan", "float32", ("batch", 16)), TensorSpec("mode", "int64", ("batch", 1))],
        outputs=[TensorSpec("cmd", "float32", ("batch", 2)), TensorSpec("mode_echo", "int64", ("batch", 1))],
        batch=BatchProfile(1, 1, 4),
        files={"model.onnx": sha256_file(root / "model.onnx")},
        name="other-model",
    )
    (root / "bundle.json").write_text(manifest.to_json())
    return root


def test_health_gate_smoke_inference_works_for_any_model(tmp_path: Path) -> None:
    """The gate's smoke input comes from the served model's own metadata (names, datatypes, shapes), so a
    policy that is not the sample one passes on a real service; the old fixed sample input is refused."""
    import httpx

    from edge_deploy.fleet.gate import ready_check, served_model, smoke_check
    from edge_runtime.service import InferenceService, ServiceConfig, create_app

    service = InferenceService(
        ServiceConfig(bundle=_other_model_bundle(tmp_path / "b"), cache=tmp_path / "c", backend="onnxruntime")
    )
    service.prepare()
    service.load()
    app = create_app(service, load_in_background=False)

    async def gate() -> tuple[str, dict, float, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://robot") as http:
            model = served_model(await ready_check(http))
            outputs, seconds = await smoke_check(http, model)
            sample = {"inputs": {"image": [[[[0.0]]]], "robot_state": [[0.0] * 48]}}
            old = await http.post("/v1/infer", json=sample)
        return model, outputs, seconds, old.status_code

    try:
        model, outputs, seconds, old_status = asyncio.run(gate())
    finally:
        service.close()
    assert model == "other-model" and seconds > 0
    assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items()} == {
        "cmd": ("FP32", [1, 2]),
        "mode_echo": ("INT64", [1, 1]),
    }
    assert old_status == 400  # what a gate built around the sample policy would have got


def test_smoke_inputs_are_made_from_metadata() -> None:
    import numpy as np

    from edge_deploy.fleet.gate import GateFailed, smoke_inputs

    meta = {
        "inputs": [
            {"name": "scan", "datatype": "FP16", "shape": [-1, 4]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1, 2]},
            {"name": "mode", "datatype": "INT32", "shape": [3]},
        ]
    }
    feeds = smoke_inputs(meta)
    assert {n: (str(a.dtype), a.shape) for n, a in feeds.items()} == {
        "scan": ("float16", (1, 4)),
        "mask": ("bool", (1, 2)),
        "mode": ("int32", (3,)),
    }
    assert (
        ((feeds["scan"] >= 0) & (feeds["scan"] < 1)).all()
        and not feeds["mask"].any()
        and not feeds["mode"].any()
    )
    again = smoke_inputs(meta)  # deterministic: every robot gets the same input
    assert all(np.array_equal(feeds[n], again[n]) for n in feeds)
    with pytest.raises(GateFailed, match="datatype BYTES"):
        smoke_inputs({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]})


META = {"outputs": [{"name": "cmd", "datatype": "FP32", "shape": [-1, 2]}]}


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"outputs": [{"name": "cmd", "shape": [1, 2], "data": [0.5, -1.0]}]}, None),
        (
            {"outputs": [{"name": "cmd", "shape": [1, 3], "data": [0, 0, 0]}]},
            "of shape [1, 3], expected [1, 2]",
        ),
        ({"outputs": [{"name": "other", "shape": [1, 2], "data": [0, 0]}]}, "no output 'cmd'"),
        (
            {"outputs": [{"name": "cmd", "shape": [1, 2], "data": [0.1, float("nan")]}]},
            "non-finite values in cmd",
        ),
        ("not json", "no output 'cmd'"),
    ],
)
def test_smoke_answer_is_checked_against_the_metadata(answer: object, problem: str | None) -> None:
    from edge_deploy.fleet.gate import GateFailed, check_smoke_answer

    if problem is None:
        assert check_smoke_answer(META, answer)["cmd"]["shape"] == [1, 2]
        return
    with pytest.raises(GateFailed, match=problem.replace("[", r"\[").replace("]", r"\]")):
        check_smoke_answer(META, answer)


def test_ros2_rollout_of_an_image_without_ros2_is_refused_before_any_robot(tmp_path: Path) -> None:
    from edge_deploy.fleet import deploy_release
    from edge_deploy.release.manifest import ReleaseManifest, save_release

    fleet = Fleet("f", tuple(robots(2, tmp_path, port=closed_port())))
    no_ros2 = ReleaseManifest.for_runtime_image("0.1.0", "reg/rt@sha256:" + "b" * 64)
    no_ros2.ros2 = False
    save_release(no_ros2, tmp_path / "releases")
    save_release(
        ReleaseManifest.for_runtime_image("0.1.1", "reg/rt@sha256:" + "c" * 64), tmp_path / "releases"
    )
    with pytest.raises(FleetError, match=r"Release 0\.1\.0's runtime image cannot serve ROS 2"):
        deploy_release(
            fleet, RolloutOptions(version="0.1.0", include_ros2=True, releases_dir=tmp_path / "releases")
        )
    # Without ROS 2 it goes ahead; a release that does not record the capability is not second-guessed.
    for version, ros2 in (("0.1.0", False), ("0.1.1", True)):
        options = RolloutOptions(
            version=version, include_ros2=ros2, dry_run=True, releases_dir=tmp_path / "releases"
        )
        out = deploy_release(fleet, options)
        assert [r["outcome"] for r in out.to_dict()["robots"]] == ["planned", "planned"]


def test_the_old_import_path_warns_and_keeps_its_keyword_form(tmp_path: Path) -> None:
    """``edge_deploy.rollout`` still works for one version: a DeprecationWarning, the old keyword names."""
    import importlib
    import sys

    from edge_deploy.release.manifest import ReleaseManifest, save_release

    sys.modules.pop("edge_deploy.rollout", None)
    with pytest.warns(DeprecationWarning, match="import from edge_deploy.fleet"):
        old = importlib.import_module("edge_deploy.rollout")
    save_release(ReleaseManifest.for_runtime_image("0.1.0", "reg/rt@sha256:" + "b" * 64), tmp_path / "r")
    fleet = Fleet("f", tuple(robots(2, tmp_path, port=closed_port())))
    out = old.deploy_release(
        "0.1.0", fleet, devices=["r1"], health_timeout=30, dry_run=True, releases_dir=tmp_path / "r"
    )
    assert [(r.robot, r.outcome) for r in out.results] == [("r1", "planned")]
    assert old.plan_waves is plan_waves
    with pytest.raises(FleetError, match="RolloutOptions has no option 'canary_size'"):
        old.deploy_release("0.1.0", fleet, canary_size=1)


@pytest.mark.parametrize(
    ("stderr", "says"),
    [
        (
            'Error response from daemon: Head "https://reg.example/v2/team/runtime/manifests/sha256:…": '
            "unauthorized: authentication required",
            "not logged in there (once per robot: `docker login reg.example` as robot)",
        ),
        ("Error response from daemon: manifest unknown", "pulling reg.example/team/runtime@sha256:"),
    ],
)
def test_a_refused_pull_says_how_to_log_the_robot_in(stderr: str, says: str) -> None:
    """What `docker pull` prints on the robot decides the sentence (the robot's engine, not this tool,
    holds the registry credentials)."""
    from edge_deploy.fleet.deploy import RobotReleases
    from edge_deploy.fleet.ssh import CommandResult

    class Conn:  # the one call pull() makes, answered as the robot's shell would
        robot = Robot(name="arm", host="127.0.0.1", user="robot")

        async def run(self, cmd: str, timeout: float = 60) -> CommandResult:
            assert cmd.startswith("docker pull -q --platform linux/arm64 ")
            return CommandResult(1, "", stderr)

    image = "reg.example/team/runtime@sha256:" + "c" * 64
    with pytest.raises(FleetError) as err:
        asyncio.run(RobotReleases(Conn()).pull(image))  # type: ignore[arg-type]
    assert says in str(err.value)


# -- a robot that should run TensorRT must not pass its gate while serving ONNX Runtime on the CPU ----------
REPO = Path(__file__).resolve().parents[2]


def _tensorrt_refusal() -> str:
    """TensorRT's own sentence for why it cannot serve here (what ``auto`` reports as its fallback)."""
    from edge_runtime.backends.tensorrt import TensorRTBackend
    from edge_runtime.errors import BackendUnavailable

    try:
        TensorRTBackend().require()
    except BackendUnavailable as exc:
        return " ".join(str(exc).split())
    pytest.skip("TensorRT is usable on this machine: auto serves it and nothing falls back")


@pytest.fixture(scope="module")
def auto_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real ``edge-runtime serve --backend auto`` on this machine (no TensorRT: it falls back to ONNX
    Runtime on the CPU and says why); yields its port."""
    import os

    from bench._serve import ServiceProcess

    _tensorrt_refusal()
    root = tmp_path_factory.mktemp("auto-service")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)])}
    with ServiceProcess(_other_model_bundle(root / "b"), root / "c", "auto", env=env) as svc:
        svc.wait_ready(timeout_s=120)
        yield svc.port


class ScriptedRobot:
    """The robot end of a RobotConnection: every command succeeds and is recorded (``answers`` maps a
    command fragment to its stdout), the container reports healthy, and the service port is forwarded to
    a real service on this machine."""

    def __init__(self, robot: Robot, service_port: int, answers: dict[str, str] | None = None) -> None:
        self.robot = robot
        self.service_port = service_port
        self.answers = {
            "docker ps -aq": "running healthy reg/rt@sha256:" + "b" * 64,
            "engine build --json": '{"hit": true, "build_seconds": 0.0, "key": "k"}',
            **(answers or {}),
        }
        self.commands: list[str] = []
        self.uploaded: dict[str, bytes] = {}
        self.written: dict[str, bytes] = {}  # path → content written over SFTP

    async def run(self, command: str, *, timeout: float | None = 600, stdin: str | None = None) -> Any:
        from edge_deploy.fleet.ssh import CommandResult

        self.commands.append(command)
        out = next((v for k, v in self.answers.items() if k in command), "")
        return CommandResult(0, out, "")

    async def check(self, command: str, what: str, *, timeout: float | None = 600) -> str:
        return str((await self.run(command, timeout=timeout)).stdout)

    async def upload(self, files: dict[str, bytes], remote_dir: str) -> int:
        self.uploaded = dict(files)
        return sum(len(v) for v in files.values())

    async def write_file(self, path: str, data: bytes, *, append: bool = False) -> None:
        self.written[path] = (self.written.get(path, b"") if append else b"") + data

    @contextlib.asynccontextmanager
    async def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> AsyncIterator[int]:
        assert remote_port == self.robot.service_port
        yield self.service_port


@pytest.mark.parametrize(
    ("gpu", "allow", "required", "expected", "because"),
    [
        (True, False, None, "tensorrt", "gpu: true"),
        (True, True, None, None, "allow_cpu_fallback: true"),
        (False, False, None, None, "gpu: false"),
        (True, False, "any", None, "accepts ONNX Runtime"),
        (True, True, "tensorrt", "tensorrt", "requires TensorRT"),
        (False, False, "tensorrt", "tensorrt", "requires TensorRT"),
    ],
)
def test_expected_backend_follows_the_inventory_and_the_release(
    gpu: bool, allow: bool, required: str | None, expected: str | None, because: str
) -> None:
    from edge_deploy.fleet.gate import expected_backend

    robot = Robot(name="r", host="h", gpu=gpu, allow_cpu_fallback=allow)
    got, why = expected_backend(robot, required)
    assert got == expected and because in why


def test_gate_refuses_a_cpu_fallback_on_a_gpu_robot_naming_both_backends_and_why(auto_service: int) -> None:
    """The gate against a real ``auto`` service that fell back: refused on a gpu robot, with the expected
    and served backends and the service's own sentence; passed where the inventory or release allows it."""
    from edge_deploy.fleet.deploy import RobotReleases
    from edge_deploy.fleet.gate import GateFailed

    def gate(robot: Robot, required: str | None = None) -> dict[str, Any]:
        releases = RobotReleases(ScriptedRobot(robot, auto_service))  # type: ignore[arg-type]
        req = DeployRequest("0.2.0", "reg/rt@sha256:" + "b" * 64, required_backend=required)
        return asyncio.run(releases.health_gate_after_up(req))

    why = _tensorrt_refusal()
    with pytest.raises(GateFailed) as err:
        gate(Robot(name="jet", host="h", gpu=True))
    reason = str(err.value)
    assert reason.startswith(
        "expected backend tensorrt (the robot has gpu: true in fleet.yaml), served onnxruntime on the CPU: "
        f"the service says: {why.rstrip('.')}; "
    ), reason
    assert "allow_cpu_fallback: true" in reason and "release with required_backend any" in reason
    for allowed in (
        Robot(name="jet", host="h", allow_cpu_fallback=True),
        Robot(name="sim", host="h", gpu=False),
    ):
        passed = gate(allowed)
        assert passed["readyz"]["fallback"] == why and passed["outputs"] == {
            "cmd": [1, 2],
            "mode_echo": [1, 1],
        }
    assert gate(Robot(name="jet", host="h"), required="any")["readyz"]["backend"] == "onnxruntime"
    with pytest.raises(GateFailed, match=r"\(the release requires TensorRT\), served onnxruntime") as err:
        gate(Robot(name="sim", host="h", gpu=False, allow_cpu_fallback=True), required="tensorrt")
    assert "no inventory setting allows it" in str(err.value)


def test_a_service_started_on_onnxruntime_fails_a_gpu_robots_gate(tmp_path: Path) -> None:
    """Not a fallback, an explicit EDGE_BACKEND=onnxruntime: a gpu robot still fails, and the reason says
    the backend was asked for."""
    from edge_deploy.fleet.gate import GateFailed, backend_check, expected_backend
    from edge_runtime.service import InferenceService, ServiceConfig

    service = InferenceService(
        ServiceConfig(bundle=_other_model_bundle(tmp_path / "b"), cache=tmp_path / "c", backend="onnxruntime")
    )
    service.prepare()
    ready = service.readiness()[1]
    with pytest.raises(
        GateFailed, match="served onnxruntime on the CPU: the service was started with --backend"
    ):
        backend_check(ready, *expected_backend(Robot(name="jet", host="h"), None))
    with pytest.raises(GateFailed, match="does not say which backend serves"):
        backend_check({"ready": True}, *expected_backend(Robot(name="jet", host="h"), None))
    backend_check({"backend": "tensorrt"}, *expected_backend(Robot(name="jet", host="h"), "tensorrt"))


IMG_A, IMG_B = "reg/rt@sha256:" + "a" * 64, "reg/rt@sha256:" + "b" * 64


def _robot_serving(tmp_path: Path, robot: Robot, port: int, running: str) -> Any:
    """A robot whose shell is a real sh (tests/build/local_robot.py), edge-update.sh run for real in it,
    its container reported healthy on ``running``, and its service port forwarded to a real service here."""
    from tests.build.local_robot import LocalRobot

    big = {"*": 50 * 1024 * 1024}
    lr = LocalRobot(
        robot,
        tmp_path,
        {
            "df": big,
            "ps": {"": [0, "c0ffee\n", ""]},
            "inspect": {
                "State.Status": [0, f"running healthy {running}\n", ""],
                "-f {{.Config.Image}}": [0, running + "\n", ""],
                "-f {{.Image}}": [0, running.split("@")[1] + "\n", ""],
            },
            "image": {"RepoDigests": [0, running + " \n", ""]},
        },
    )
    lr.service_port = port
    for version, image in (("0.1.0", IMG_A), ("0.2.0", IMG_B)):
        d = lr.file(f"edge/releases/{version}")
        d.mkdir(parents=True, exist_ok=True)
        (d / ".env").write_text(f"EDGE_IMAGE={image}\n")
    return lr


def test_a_cpu_fallback_rolls_a_gpu_robot_back_to_its_previous_release(
    auto_service: int, tmp_path: Path
) -> None:
    """The whole update after the lock: the new release comes up healthy in Docker's eyes but serves ONNX
    Runtime on the CPU; the gate refuses, the version is marked bad and edge-update.sh on the robot (a real
    sh) restores the previous release."""
    from edge_deploy.fleet.deploy import RobotReleases
    from edge_deploy.fleet.outcome import ROLLED_BACK, RobotResult

    robot = Robot(name="jet", host="h", gpu=True, compose_dir="edge")
    lr = _robot_serving(tmp_path, robot, auto_service, IMG_B)
    req = DeployRequest("0.2.0", IMG_B)
    res = RobotResult(robot.name, req.version, "failed")
    out = asyncio.run(RobotReleases(lr)._deploy_locked(req, res, "0.1.0", None, False, {}))
    assert out.outcome == ROLLED_BACK and out.stage == "health", out.reason
    assert "expected backend tensorrt" in out.reason and "served onnxruntime on the CPU" in out.reason
    assert _tensorrt_refusal().rstrip(".") in out.reason and out.reason.endswith("; restored 0.1.0")
    assert os.readlink(lr.file("edge/current")) == "releases/0.1.0"
    state = json.loads(lr.file("edge/state.json").read_text())
    assert (state["current"], state["last_result"], state["bad"]) == ("0.1.0", "rolled_back", "0.2.0")
    assert lr.file("edge/bad-versions").read_text() == "0.2.0\n"
    env = lr.file("edge/releases/0.2.0/.env").read_text()
    assert "COMPOSE_FILE=compose.yaml:compose.jetson.yaml" in env
    assert json.loads(lr.file("edge/releases/0.2.0/release.json").read_text())["required_backend"] is None
    ups = [c for c in lr.calls() if c[:1] == ["compose"] and "up" in c]
    assert len(ups) == 2  # the new release, then the restore


def test_a_manual_rollback_gates_on_the_backend_its_release_required(
    auto_service: int, tmp_path: Path
) -> None:
    """``fleet rollback`` reads the target's release.json: a release made with --required-backend any comes
    back on a gpu robot serving ONNX Runtime; one without it is refused and the current one restored."""
    from edge_deploy.fleet.deploy import RobotReleases
    from edge_deploy.fleet.outcome import FAILED, UPDATED

    robot = Robot(name="jet", host="h", gpu=True, compose_dir="edge")
    outcomes = {}
    for recorded in ("any", None):
        lr = _robot_serving(tmp_path / str(recorded), robot, auto_service, IMG_B)
        lr.file("edge/state.json").write_text(json.dumps({"current": "0.2.0", "previous": "0.1.0"}))
        lr.file("edge/releases/0.1.0/release.json").write_text(
            json.dumps({"version": "0.1.0", "required_backend": recorded})
        )
        res = asyncio.run(RobotReleases(lr).rollback(None, 60))
        outcomes[recorded] = (res.outcome, res.reason, os.readlink(lr.file("edge/current")))
    assert outcomes["any"] == (UPDATED, "", "releases/0.1.0")
    assert outcomes[None][0] == FAILED and "expected backend tensorrt" in outcomes[None][1]
    assert outcomes[None][1].endswith("; 0.2.0 restored") and outcomes[None][2] == "releases/0.2.0"


def test_release_manifest_records_the_required_backend(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edge_deploy.cli.release import release
    from edge_deploy.release.manifest import ReleaseError, ReleaseManifest, load_release, save_release

    ref = "reg/rt@sha256:" + "c" * 64
    save_release(ReleaseManifest.for_runtime_image("0.3.0", ref, required_backend="any"), tmp_path)
    assert load_release("0.3.0", tmp_path).required_backend == "any"
    old = ReleaseManifest.for_runtime_image("0.3.1", ref).to_dict()
    del old["required_backend"]  # a manifest written before the field existed: the inventory decides
    assert ReleaseManifest.from_dict(old).required_backend is None
    with pytest.raises(ReleaseError, match="required_backend 'gpu'; expected one of tensorrt, any"):
        ReleaseManifest.from_dict({**old, "required_backend": "gpu"})
    r = CliRunner().invoke(release, ["create", "0.3.2", "--no-push", "--required-backend", "gpu"])
    assert r.exit_code == 2 and "'gpu' is not one of 'tensorrt', 'any'" in r.output
